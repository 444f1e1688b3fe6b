#![allow(clippy::unwrap_used)]

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

fn payload(i: u64) -> Vec<u8> {
    let len = (i as usize * 7) % 50;
    let mut p = format!("record-{i}:").into_bytes();
    p.extend(std::iter::repeat_n(i as u8, len));
    p
}

fn read_all(journal: &Journal, from: u64) -> Vec<Record> {
    journal
        .read_from(from)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    format::list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

fn last_segment(dir: &Path) -> PathBuf {
    segments(dir).pop().unwrap()
}

async fn fill(journal: &Journal, range: std::ops::Range<u64>) {
    for i in range {
        assert_eq!(journal.append(payload(i)).await.unwrap(), i);
    }
}

#[tokio::test]
async fn appends_are_contiguous_and_read_back_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert_eq!(journal.next_seq(), 0);
    fill(&journal, 0..20).await;
    assert_eq!(journal.append(Vec::new()).await.unwrap(), 20);
    assert_eq!(journal.next_seq(), 21);
    journal.close().await;

    let journal = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert_eq!(journal.next_seq(), 21);
    let records = read_all(&journal, 0);
    assert_eq!(records.len(), 21);
    for (i, record) in records.iter().enumerate().take(20) {
        assert_eq!(record.seq, i as u64);
        assert_eq!(record.payload, payload(i as u64));
    }
    assert_eq!(records[20].payload, Vec::<u8>::new());
    let tail = read_all(&journal, 15);
    assert_eq!(tail.first().unwrap().seq, 15);
    assert_eq!(tail.len(), 6);
    assert!(read_all(&journal, 21).is_empty());
    assert!(read_all(&journal, 1000).is_empty());
    assert_eq!(journal.append(payload(21)).await.unwrap(), 21);
}

#[tokio::test]
async fn append_batch_is_contiguous_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert_eq!(journal.append(payload(0)).await.unwrap(), 0);
    let seqs = journal
        .append_batch((1..6).map(payload).collect())
        .await
        .unwrap();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    assert!(journal.append_batch(Vec::new()).await.unwrap().is_empty());
    let too_many = vec![Vec::new(); DEFAULT_MAX_BATCH_RECORDS + 1];
    assert!(matches!(
        journal.append_batch(too_many).await,
        Err(JournalError::BatchTooLarge { .. })
    ));
    let too_big = vec![vec![0u8; MAX_PAYLOAD_LEN]; 5];
    assert!(matches!(
        journal.append_batch(too_big).await,
        Err(JournalError::BatchTooLarge { .. })
    ));
    assert_eq!(journal.append(payload(6)).await.unwrap(), 6);
    let records = read_all(&journal, 0);
    assert_eq!(
        records
            .iter()
            .map(|r| r.payload.clone())
            .collect::<Vec<_>>(),
        (0..7).map(payload).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    // A slow disk (2 ms per sync), so that appends pile up behind each sync.
    let faults: FaultInjector = Arc::new(|point| {
        if point == FaultPoint::AfterWrite {
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    });
    let options = JournalOptions {
        faults: Some(faults),
        ..JournalOptions::default()
    };
    let journal = Journal::open(dir.path(), options).unwrap();
    let tasks: Vec<_> = (0..200u64)
        .map(|i| {
            let journal = journal.clone();
            tokio::spawn(async move {
                let body = format!("concurrent-{i}").into_bytes();
                (journal.append(body.clone()).await.unwrap(), body)
            })
        })
        .collect();
    let mut answered = Vec::new();
    for task in tasks {
        answered.push(task.await.unwrap());
    }
    let stats = journal.stats();
    assert_eq!(stats.records, 200);
    assert!(stats.syncs < 200, "{stats:?}");
    assert!(stats.batches < 200, "{stats:?}");
    let mut seqs: Vec<u64> = answered.iter().map(|(s, _)| *s).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..200).collect::<Vec<_>>());
    let records = read_all(&journal, 0);
    assert_eq!(records.len(), 200);
    for (seq, body) in answered {
        assert_eq!(records[seq as usize].payload, body);
    }
}

#[tokio::test]
async fn segments_roll_over_and_stay_contiguous() {
    let dir = tempfile::tempdir().unwrap();
    let options = || JournalOptions {
        segment_size: 100,
        ..JournalOptions::default()
    };
    let journal = Journal::open(dir.path(), options()).unwrap();
    fill(&journal, 0..30).await;
    journal.close().await;

    let files = segments(dir.path());
    assert!(files.len() > 3, "{files:?}");
    let mut expected_first = 0;
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(name, format!("journal-{expected_first:020}.seg"));
        let records: u64 = {
            let bytes = std::fs::read(file).unwrap();
            let mut at = 0;
            let mut n = 0;
            while at < bytes.len() {
                let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
                at += HEADER_LEN + len;
                n += 1;
            }
            n
        };
        expected_first += records;
    }
    assert_eq!(expected_first, 30);

    let journal = Journal::open(dir.path(), options()).unwrap();
    assert_eq!(journal.next_seq(), 30);
    let records = read_all(&journal, 0);
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (0..30).collect::<Vec<_>>()
    );
    assert_eq!(records[17].payload, payload(17));
    // Reading from the middle starts in the right segment.
    let from = read_all(&journal, 17);
    assert_eq!(from.first().unwrap().seq, 17);
    assert_eq!(from.len(), 13);
    fill(&journal, 30..35).await;
    assert_eq!(read_all(&journal, 0).len(), 35);
}

#[tokio::test]
async fn garbage_tail_is_cut_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    fill(&journal, 0..10).await;
    journal.close().await;
    let last = last_segment(dir.path());
    let good_len = std::fs::metadata(&last).unwrap().len();
    let mut file = OpenOptions::new().append(true).open(&last).unwrap();
    // A header claiming a huge length, then zeros: what a crash mid-write can leave.
    file.write_all(&[0xff; 16]).unwrap();
    file.write_all(&[0; 100]).unwrap();
    drop(file);

    let journal = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert_eq!(journal.next_seq(), 10);
    assert_eq!(std::fs::metadata(&last).unwrap().len(), good_len);
    assert_eq!(read_all(&journal, 0).len(), 10);
    assert_eq!(journal.append(payload(10)).await.unwrap(), 10);
    journal.close().await;
    let journal = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    let records = read_all(&journal, 0);
    assert_eq!(records.len(), 11);
    assert_eq!(records[10].payload, payload(10));
}

#[tokio::test]
async fn truncated_last_record_is_cut() {
    for cut in [3u64, 20] {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        fill(&journal, 0..10).await;
        journal.close().await;
        let last = last_segment(dir.path());
        let len = std::fs::metadata(&last).unwrap().len();
        // `cut` = 3 tears the payload, 20 also the header of the last record.
        OpenOptions::new()
            .write(true)
            .open(&last)
            .unwrap()
            .set_len(len - cut)
            .unwrap();

        let journal = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        assert_eq!(journal.next_seq(), 9, "cut {cut}");
        let records = read_all(&journal, 0);
        assert_eq!(records.len(), 9);
        assert_eq!(records[8].payload, payload(8));
        assert_eq!(journal.append(b"again".to_vec()).await.unwrap(), 9);
        journal.close().await;
        let journal = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        assert_eq!(read_all(&journal, 9)[0].payload, b"again");
    }
}

#[tokio::test]
async fn torn_first_record_of_a_new_segment_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let options = || JournalOptions {
        segment_size: 100,
        ..JournalOptions::default()
    };
    let journal = Journal::open(dir.path(), options()).unwrap();
    fill(&journal, 0..10).await;
    journal.close().await;
    let last = last_segment(dir.path());
    let first_of_last: u64 = last.file_name().unwrap().to_str().unwrap()[8..28]
        .parse()
        .unwrap();
    OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(5)
        .unwrap();
    let journal = Journal::open(dir.path(), options()).unwrap();
    assert_eq!(journal.next_seq(), first_of_last);
    assert_eq!(journal.append(payload(99)).await.unwrap(), first_of_last);
}

/// Offset of record `index` in a segment holding records `0..` with `payload(i)`.
fn offset_of(index: u64) -> u64 {
    (0..index)
        .map(|i| (HEADER_LEN + payload(i).len()) as u64)
        .sum()
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn flipped_byte_in_a_middle_record_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    fill(&journal, 0..10).await;
    journal.close().await;
    let last = last_segment(dir.path());
    // A payload byte of record 4.
    flip_byte(&last, offset_of(4) + HEADER_LEN as u64 + 2);

    let err = Journal::open(dir.path(), JournalOptions::default()).unwrap_err();
    match &err {
        JournalError::Corrupt { path, offset, .. } => {
            assert_eq!(path, &last);
            assert_eq!(*offset, offset_of(4));
        }
        other => panic!("unexpected error {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("journal-00000000000000000000.seg"),
        "{message}"
    );
    // Nothing was truncated.
    assert_eq!(
        std::fs::metadata(&last).unwrap().len(),
        offset_of(10),
        "the file must be left as it was"
    );
}

#[tokio::test]
async fn bad_last_record_of_an_earlier_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let options = || JournalOptions {
        segment_size: 100,
        ..JournalOptions::default()
    };
    let journal = Journal::open(dir.path(), options()).unwrap();
    fill(&journal, 0..10).await;
    journal.close().await;
    let first = segments(dir.path()).remove(0);
    let len = std::fs::metadata(&first).unwrap().len();
    flip_byte(&first, len - 1);
    let err = Journal::open(dir.path(), options()).unwrap_err();
    assert!(
        matches!(&err, JournalError::Corrupt { path, .. } if path == &first),
        "{err}"
    );
}

#[tokio::test]
async fn missing_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let options = || JournalOptions {
        segment_size: 100,
        ..JournalOptions::default()
    };
    let journal = Journal::open(dir.path(), options()).unwrap();
    fill(&journal, 0..10).await;
    journal.close().await;
    let files = segments(dir.path());
    assert!(files.len() >= 3);
    std::fs::remove_file(&files[1]).unwrap();
    let err = Journal::open(dir.path(), options()).unwrap_err();
    assert!(
        matches!(&err, JournalError::Corrupt { path, .. } if path == &files[2]),
        "{err}"
    );
}

#[tokio::test]
async fn fault_after_write_fails_the_batch_and_seq_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let options = || {
        let fail = Arc::clone(&fail);
        let faults: FaultInjector = Arc::new(move |point| {
            if point == FaultPoint::AfterWrite && fail.swap(false, Ordering::SeqCst) {
                return Err(std::io::Error::other("injected: disk full"));
            }
            Ok(())
        });
        JournalOptions {
            faults: Some(faults),
            ..JournalOptions::default()
        }
    };
    let journal = Journal::open(dir.path(), options()).unwrap();
    fill(&journal, 0..3).await;

    fail.store(true, Ordering::SeqCst);
    let err = journal.append(b"lost".to_vec()).await.unwrap_err();
    assert!(matches!(err, JournalError::Unavailable { .. }), "{err}");
    assert_eq!(journal.next_seq(), 3);
    assert_eq!(journal.stats().failed_batches, 1);
    assert_eq!(read_all(&journal, 0).len(), 3);

    // Fail again, then stop without any further append: the failed batch must not be on disk.
    fail.store(true, Ordering::SeqCst);
    assert!(
        journal
            .append_batch(vec![b"lost-2".to_vec(); 3])
            .await
            .is_err()
    );
    journal.close().await;
    let journal = Journal::open(dir.path(), options()).unwrap();
    assert_eq!(journal.next_seq(), 3);
    assert!(
        read_all(&journal, 0)
            .iter()
            .all(|r| !r.payload.starts_with(b"lost"))
    );

    // The next append gets the failed one's sequence number.
    assert_eq!(journal.append(b"kept".to_vec()).await.unwrap(), 3);
    journal.close().await;
    let journal = Journal::open(dir.path(), options()).unwrap();
    let records = read_all(&journal, 0);
    assert_eq!(records.len(), 4);
    assert_eq!(records[3].payload, b"kept");
}

#[tokio::test]
async fn fault_before_write_fails_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&fail);
    let faults: FaultInjector = Arc::new(move |point| {
        if point == FaultPoint::BeforeWrite && flag.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected: disk gone"));
        }
        Ok(())
    });
    let options = JournalOptions {
        faults: Some(faults),
        ..JournalOptions::default()
    };
    let journal = Journal::open(dir.path(), options).unwrap();
    for _ in 0..3 {
        assert!(matches!(
            journal.append(b"x".to_vec()).await,
            Err(JournalError::Unavailable { .. })
        ));
    }
    fail.store(false, Ordering::SeqCst);
    assert_eq!(journal.append(b"y".to_vec()).await.unwrap(), 0);
    assert_eq!(journal.stats().failed_batches, 3);
}

#[tokio::test]
async fn no_answer_before_sync() {
    let dir = tempfile::tempdir().unwrap();
    // The writer blocks after writing, before syncing, until the test lets it go.
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let faults: FaultInjector = Arc::new(move |point| {
        if point == FaultPoint::AfterWrite {
            let _ = release_rx.lock().unwrap().recv();
        }
        Ok(())
    });
    let options = JournalOptions {
        faults: Some(faults),
        ..JournalOptions::default()
    };
    let journal = Journal::open(dir.path(), options).unwrap();
    let pending = tokio::spawn({
        let journal = journal.clone();
        async move { journal.append(b"held".to_vec()).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!pending.is_finished(), "answered before its sync");
    assert_eq!(journal.next_seq(), 0);
    assert_eq!(journal.stats().syncs, 0);
    release_tx.send(()).unwrap();
    assert_eq!(pending.await.unwrap().unwrap(), 0);
    assert_eq!(journal.stats().syncs, 1);
    drop(release_tx);
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Fault(FaultPoint),
    Hook(Vec<u64>),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hook_sees_every_record_once_in_order_after_sync() {
    let dir = tempfile::tempdir().unwrap();
    let events = Arc::new(Mutex::new(Vec::<Event>::new()));
    let seen = Arc::new(Mutex::new(Vec::<(u64, Vec<u8>)>::new()));
    let fail_next = Arc::new(AtomicBool::new(false));
    let faults: FaultInjector = {
        let events = Arc::clone(&events);
        let fail_next = Arc::clone(&fail_next);
        Arc::new(move |point| {
            events.lock().unwrap().push(Event::Fault(point));
            if point == FaultPoint::AfterWrite && fail_next.swap(false, Ordering::SeqCst) {
                return Err(std::io::Error::other("injected"));
            }
            Ok(())
        })
    };
    let hook: CommitHook = {
        let events = Arc::clone(&events);
        let seen = Arc::clone(&seen);
        Box::new(move |batch: &CommittedBatch<'_>| {
            assert_eq!(batch.records.first().map(|r| r.0), Some(batch.first_seq));
            events
                .lock()
                .unwrap()
                .push(Event::Hook(batch.records.iter().map(|r| r.0).collect()));
            seen.lock()
                .unwrap()
                .extend(batch.records.iter().map(|(s, p)| (*s, p.to_vec())));
        })
    };
    let options = JournalOptions {
        hook: Some(hook),
        faults: Some(faults),
        ..JournalOptions::default()
    };
    let journal = Journal::open(dir.path(), options).unwrap();

    // A failed batch never reaches the hook.
    fail_next.store(true, Ordering::SeqCst);
    assert!(journal.append(b"failed".to_vec()).await.is_err());

    let tasks: Vec<_> = (0..100u64)
        .map(|i| {
            let journal = journal.clone();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let seq = journal.append(payload(i)).await.unwrap();
                // Answered only after the hook saw the record.
                assert!(seen.lock().unwrap().iter().any(|(s, _)| *s == seq));
                (seq, payload(i))
            })
        })
        .collect();
    let mut answered = Vec::new();
    for task in tasks {
        answered.push(task.await.unwrap());
    }
    assert_eq!(
        journal
            .append_batch(vec![b"a".to_vec(), b"b".to_vec()])
            .await
            .unwrap(),
        vec![100, 101]
    );
    journal.close().await;

    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (0..102).collect::<Vec<_>>(),
        "every record exactly once, in order"
    );
    answered.sort();
    for (seq, body) in &answered {
        assert_eq!(&seen[*seq as usize].1, body);
    }
    assert!(seen.iter().all(|(_, p)| p != b"failed"));

    // Per batch: BeforeWrite, AfterWrite, AfterSync, then the hook.
    let events = events.lock().unwrap().clone();
    let mut state = Vec::new();
    for event in &events {
        match event {
            Event::Fault(FaultPoint::BeforeWrite) => {
                state.clear();
                state.push(FaultPoint::BeforeWrite);
            }
            Event::Fault(point) => state.push(*point),
            Event::Hook(_) => assert_eq!(
                state,
                vec![
                    FaultPoint::BeforeWrite,
                    FaultPoint::AfterWrite,
                    FaultPoint::AfterSync
                ],
                "{events:?}"
            ),
        }
    }
    let hooks = events
        .iter()
        .filter(|e| matches!(e, Event::Hook(_)))
        .count();
    let syncs = events
        .iter()
        .filter(|e| **e == Event::Fault(FaultPoint::AfterSync))
        .count();
    assert_eq!(hooks, syncs);
    // The failed batch: BeforeWrite, AfterWrite, and no AfterSync nor hook after it.
    assert_eq!(
        &events[..3],
        &[
            Event::Fault(FaultPoint::BeforeWrite),
            Event::Fault(FaultPoint::AfterWrite),
            Event::Fault(FaultPoint::BeforeWrite),
        ]
    );
}

#[tokio::test]
async fn oversized_payload_is_refused_and_journal_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert!(matches!(
        journal.append(vec![0; MAX_PAYLOAD_LEN + 1]).await,
        Err(JournalError::PayloadTooLarge { .. })
    ));
    assert!(matches!(
        journal
            .append_batch(vec![b"ok".to_vec(), vec![0; MAX_PAYLOAD_LEN + 1]])
            .await,
        Err(JournalError::PayloadTooLarge { .. })
    ));
    assert_eq!(journal.append(b"small".to_vec()).await.unwrap(), 0);
    assert_eq!(journal.append(vec![7; MAX_PAYLOAD_LEN]).await.unwrap(), 1);
    journal.close().await;
    let journal = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    let records = read_all(&journal, 0);
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].payload.len(), MAX_PAYLOAD_LEN);
}

#[tokio::test]
async fn appends_after_close_fail() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    let other = journal.clone();
    fill(&journal, 0..3).await;
    journal.close().await;
    assert!(matches!(
        other.append(b"late".to_vec()).await,
        Err(JournalError::Closed)
    ));
    assert_eq!(other.next_seq(), 3);
    assert_eq!(read_all(&other, 0).len(), 3);
}

#[tokio::test]
async fn reader_stops_at_durable_records() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    fill(&journal, 0..5).await;
    let reader = journal.read_from(0).unwrap();
    fill(&journal, 5..8).await;
    assert_eq!(reader.count(), 5);
    assert_eq!(read_all(&journal, 0).len(), 8);
}

#[tokio::test]
async fn invalid_segment_name_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    fill(&journal, 0..2).await;
    journal.close().await;
    std::fs::write(dir.path().join("journal-12.seg"), b"").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
    assert!(matches!(
        Journal::open(dir.path(), JournalOptions::default()),
        Err(JournalError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn reading_from_a_position_starts_there_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let options = || JournalOptions {
        segment_size: 300,
        ..JournalOptions::default()
    };
    let journal = Journal::open(dir.path(), options()).unwrap();
    fill(&journal, 0..40).await;
    assert!(segments(dir.path()).len() > 3, "several segments");

    let mut reader = journal.read_from(0).unwrap();
    let mut positions = Vec::new();
    while let Some(record) = reader.next() {
        record.unwrap();
        positions.push(reader.position().unwrap());
    }
    for seq in [0u64, 1, 17, 39] {
        let at = positions[seq as usize];
        assert_eq!(journal.read_at(seq, at).unwrap(), payload(seq));
        let from_at: Vec<Record> = journal
            .read_from_at(seq, at)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(from_at, read_all(&journal, seq), "from {seq}");
    }
    // A position that does not hold the record is corruption, not another record.
    let wrong = journal
        .read_from_at(17, positions[16])
        .unwrap()
        .next()
        .unwrap();
    assert!(
        matches!(wrong, Err(JournalError::Corrupt { .. })),
        "{wrong:?}"
    );
    assert!(journal.read_at(17, positions[16]).is_err());
}
