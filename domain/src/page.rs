//! Pages of a list (consents, mandates): at most a page size of the items the caller may see,
//! after a page token (the last id of the previous page), with the next page's token. Items
//! are read from the store's index as the page fills, so a page of a long history costs what
//! it reads, not the whole history.

/// Items per page when the caller asks for none.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Items per page at most.
pub const MAX_PAGE_SIZE: u32 = 100;

/// The page size served for a requested one (0: the default; capped at the maximum).
pub fn size(requested: u32) -> usize {
    let size = match requested {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    };
    size as usize
}

/// The first `size` of `items` (in id order, after the page token) that `keep` accepts, and
/// the next page's token: the last one's id when more follow, empty otherwise.
pub fn collect<T, E>(
    items: impl IntoIterator<Item = Result<T, E>>,
    size: usize,
    keep: impl Fn(&T) -> bool,
    id: impl Fn(&T) -> &str,
) -> Result<(Vec<T>, String), E> {
    let mut page = Vec::with_capacity(size);
    for item in items {
        let item = item?;
        if !keep(&item) {
            continue;
        }
        if page.len() == size {
            let next = page.last().map(|last| id(last).to_string());
            return Ok((page, next.unwrap_or_default()));
        }
        page.push(item);
    }
    Ok((page, String::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_stops_at_its_size_and_says_whether_more_follow() {
        let ids = ["a", "b", "c", "d", "e"];
        let items = || ids.iter().map(|s| Ok::<_, ()>(s.to_string()));
        let all = |_: &String| true;
        fn id(s: &String) -> &str {
            s
        }
        assert_eq!(
            collect(items(), 2, all, id),
            Ok((vec!["a".into(), "b".into()], "b".into()))
        );
        assert_eq!(
            collect(items(), 5, all, id),
            Ok((ids.map(String::from).to_vec(), String::new())),
            "exactly a page: no next token"
        );
        // Skipped items neither fill the page nor make a next one.
        let not_b_or_e = |s: &String| s != "b" && s != "e";
        assert_eq!(
            collect(items(), 3, not_b_or_e, id),
            Ok((vec!["a".into(), "c".into(), "d".into()], String::new()))
        );
        let failing = vec![Ok("a".to_string()), Err("store")];
        assert_eq!(collect(failing, 5, all, id), Err("store"));
        assert_eq!((size(0), size(7), size(10_000)), (50, 7, 100));
    }
}
