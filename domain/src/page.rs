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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_size_is_the_default_or_capped() {
        assert_eq!((size(0), size(7), size(10_000)), (50, 7, 100));
    }
}
