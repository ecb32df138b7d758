//! Files through the SDK against a real relay: Alice sends a file to Bob in their 1:1; every
//! device of both reads it whole and byte for byte, with progress; the relay holds only
//! ciphertext (neither the file's bytes nor its name are on its disk); an upload cut by a
//! relay restart, or a part the relay answers `unavailable`, goes on where the relay stands;
//! a download asks again for a part the relay answers `unavailable`; and a blob tampered with at the relay, or a message whose digest or key does not match,
//! saves nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferry_client::attachments::AttachmentError;
use ferry_client::{ClientError, Content, ConvId, FileRef, Progress};
use support::conversations::{Dev, TwoInAChat, person, two_in_a_chat};
use support::{Adjust, TestRelay, free_addr};

/// A file of `len` bytes that never repeats a 64-byte window (so a piece of it found on the
/// relay's disk is a real leak), named `name`.
fn a_file(dir: &Path, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
    use sha2::{Digest, Sha256};
    let seed: u64 = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
    let mut bytes = Vec::with_capacity(len + 32);
    let mut block = 0u64;
    while bytes.len() < len {
        let digest = Sha256::new()
            .chain_update(seed.to_le_bytes())
            .chain_update(block.to_le_bytes())
            .finalize();
        bytes.extend_from_slice(&digest);
        block += 1;
    }
    bytes.truncate(len);
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

/// Waits until `dev` holds message `seq` and returns its file.
async fn file_at(dev: &mut Dev, conv: ConvId, seq: u64) -> FileRef {
    match dev.message(conv, seq).await.content {
        Content::File(file) => file,
        other => panic!("message {seq} holds {other:?}"),
    }
}

/// Every progress report, kept.
fn recorder() -> (Arc<Mutex<Vec<Progress>>>, impl Fn(Progress) + Send + Sync) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&seen);
    (seen, move |p| keep.lock().unwrap().push(p))
}

fn assert_progress_complete(seen: &[Progress], total: u64) {
    assert!(!seen.is_empty());
    assert!(seen.windows(2).all(|w| w[0].done <= w[1].done), "{seen:?}");
    assert!(seen.iter().all(|p| p.total == total && p.done <= total));
    assert_eq!(seen.last().unwrap().done, total);
}

/// Every file under `dir`, read.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap_or_default()));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_reaches_every_device_whole_and_the_relay_sees_only_ciphertext() {
    let TwoInAChat {
        relay,
        mut alice,
        mut bob,
        conv,
        dir,
    } = two_in_a_chat().await;
    let name = "holiday-photo-unique-name.png";
    let (path, bytes) = a_file(dir.path(), name, 600 * 1024 + 7);
    let (sent, progress) = recorder();
    let seq = alice
        .one
        .handle()
        .send_file(conv, &path, progress)
        .await
        .unwrap();
    assert_progress_complete(&sent.lock().unwrap(), bytes.len() as u64);

    let file = file_at(&mut bob.one, conv, seq).await;
    assert_eq!(file.name, name);
    assert_eq!(file.mime, "image/png");
    assert_eq!(file.size, bytes.len() as u64);
    let (received, progress) = recorder();
    let dest = dir.path().join("saved.png");
    bob.one
        .handle()
        .save_file(&file, &dest, progress)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    assert_progress_complete(&received.lock().unwrap(), bytes.len() as u64);
    assert!(!dir.path().join("saved.png.ferry-part").exists());
    // Bob's other device, and Alice's, read it too (into memory, a preview).
    let on_two = file_at(&mut bob.two, conv, seq).await;
    assert_eq!(
        bob.two.handle().fetch_file(&on_two, 1 << 20).await.unwrap(),
        bytes
    );
    let alices = file_at(&mut alice.two, conv, seq).await;
    assert_eq!(
        alice
            .two
            .handle()
            .fetch_file(&alices, 1 << 20)
            .await
            .unwrap(),
        bytes
    );
    // It counts as unread for Bob, like a text.
    let unread = bob.one.handle().conversations().await.unwrap();
    assert_eq!(
        unread
            .iter()
            .find(|c| c.conv == conv)
            .unwrap()
            .summary
            .unread,
        1
    );

    // The relay's disk (database and blobs): no window of the file, nor its name.
    for (path, stored) in files_under(&relay.data) {
        for window in bytes.chunks(64).step_by(97) {
            assert!(
                !contains(&stored, window),
                "plaintext in {}",
                path.display()
            );
        }
        assert!(
            !contains(&stored, name.as_bytes()),
            "the name in {}",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_by_a_relay_restart_goes_on_where_the_relay_stands() {
    let TwoInAChat {
        mut relay,
        alice,
        mut bob,
        conv,
        dir,
    } = two_in_a_chat().await;
    // 40 parts: at most a window of them is at the relay when it goes down.
    let (path, bytes) = a_file(dir.path(), "big.bin", 40 * 262_128);
    let (paused, pause) = std::sync::mpsc::channel::<()>();
    let (resume, resumed) = std::sync::mpsc::channel::<()>();
    let resumed = Mutex::new(Some(resumed));
    let sender = alice.one.handle();
    let upload = tokio::spawn(async move {
        sender
            .send_file(conv, &path, move |p: Progress| {
                // The first part stored: hold the upload while the relay restarts.
                if p.done > 0
                    && p.done < p.total
                    && let Some(resumed) = resumed.lock().unwrap().take()
                {
                    paused.send(()).unwrap();
                    resumed.recv().unwrap();
                }
            })
            .await
    });
    tokio::task::spawn_blocking(move || pause.recv().unwrap())
        .await
        .unwrap();
    relay.restart();
    resume.send(()).unwrap();
    let seq = upload.await.unwrap().unwrap();
    let file = file_at(&mut bob.one, conv, seq).await;
    let dest = dir.path().join("big.out");
    bob.one
        .handle()
        .save_file(&file, &dest, |_| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_saved_from_a_blob_or_a_message_that_does_not_match() {
    let TwoInAChat {
        relay,
        alice,
        mut bob,
        conv,
        dir,
    } = two_in_a_chat().await;
    let (path, _) = a_file(dir.path(), "doc.pdf", 300 * 1024);
    let seq = alice
        .one
        .handle()
        .send_file(conv, &path, |_| {})
        .await
        .unwrap();
    let file = file_at(&mut bob.one, conv, seq).await;
    let dest = dir.path().join("doc-saved.pdf");
    let corrupt = |result: Result<(), ClientError>| {
        assert!(
            matches!(
                result,
                Err(ClientError::Attachment(AttachmentError::Corrupt(_)))
            ),
            "{result:?}"
        );
        assert!(!dest.exists());
        assert!(!dir.path().join("doc-saved.pdf.ferry-part").exists());
    };
    // A message whose digest or key is not the blob's.
    let mut wrong = file.clone();
    wrong.digest[0] ^= 1;
    corrupt(bob.one.handle().save_file(&wrong, &dest, |_| {}).await);
    let mut wrong = file.clone();
    wrong.key.0[0] ^= 1;
    corrupt(bob.one.handle().save_file(&wrong, &dest, |_| {}).await);
    // A byte of the blob flipped on the relay's disk (the second part: the first opened
    // and was written to the temporary file, which goes too).
    let blobs = files_under(&relay.data.join("blobs"));
    let (part, mut stored) = blobs
        .into_iter()
        .find(|(p, _)| p.file_name().unwrap() == "1")
        .expect("the blob's second part on the relay's disk");
    stored[10] ^= 1;
    std::fs::write(&part, &stored).unwrap();
    corrupt(bob.one.handle().save_file(&file, &dest, |_| {}).await);
    // Bob's memory preview refuses it too.
    let preview = bob.one.handle().fetch_file(&file, 1 << 20).await;
    assert!(matches!(
        preview,
        Err(ClientError::Attachment(AttachmentError::Corrupt(_)))
    ));
}

/// A device over its attachment bandwidth is told `rate_limited` for a part: it pauses and
/// goes on, both ways, and the file arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_over_its_bandwidth_pauses_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let adjust: Adjust = Arc::new(|config: &mut ferry_relay::Config| {
        config.attachments.parts_per_device_per_second = 4;
    });
    let relay = TestRelay::start_with(&dir.path().join("relay"), free_addr(), adjust);
    let alice = person(dir.path(), &relay, &relay, "alice").await;
    // 16 parts: four times what the relay takes from a device in a burst, and more than it
    // takes in a second even from a slow debug build.
    let (path, bytes) = a_file(dir.path(), "big.bin", 16 * 262_128);
    let handle = alice.one.handle();
    let file = handle.upload_file(&path, &|_| {}).await.unwrap();
    let dest = dir.path().join("big.out");
    handle.save_file(&file, &dest, |_| {}).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    // It was refused on the way (else this test proves nothing).
    let metrics = relay.metrics();
    assert!(metrics.contains("code=\"rate_limited\""), "{metrics}");
}

/// The relay answers `unavailable` for a part while the parts after it are in flight (as it
/// does when its storage fails, or when it goes away mid-request): the upload pauses, sends
/// that part again, goes on from where the relay's answer says it stands, and the file
/// arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_refused_as_unavailable_goes_again_and_the_upload_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let alice = person(dir.path(), &relay, &relay, "alice").await;
    // 20 parts: part 10 is sent only after part 0 is stored (a window is 8 parts).
    let (path, bytes) = a_file(dir.path(), "big.bin", 20 * 262_128);
    let blobs = relay.data.join("blobs");
    // Once part 0 is stored (and before part 10 is sent): a folder where part 10's temporary
    // file goes, so the relay cannot store that part and answers `unavailable`.
    let blocked = std::sync::OnceLock::<PathBuf>::new();
    let progress = |p: Progress| {
        if p.done > 0 && blocked.get().is_none() {
            let (part0, _) = files_under(&blobs)
                .into_iter()
                .find(|(p, _)| p.file_name().unwrap() == "0")
                .expect("the blob's first part on the relay's disk");
            let obstacle = part0.with_file_name("10.tmp");
            std::fs::create_dir(&obstacle).unwrap();
            blocked.set(obstacle).unwrap();
        }
    };
    let handle = alice.one.handle();
    let upload = handle.upload_file(&path, &progress);
    // Once the relay refused it: the obstacle goes, so the part can be stored when sent again.
    let unblock = async {
        let deadline = tokio::time::Instant::now() + support::WAIT;
        while !relay.metrics().contains("code=\"unavailable\"") {
            assert!(tokio::time::Instant::now() < deadline, "no part refused");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        std::fs::remove_dir(blocked.get().unwrap()).unwrap();
    };
    let (file, ()) = tokio::join!(upload, unblock);
    let file = file.unwrap();
    let dest = dir.path().join("big.out");
    handle.save_file(&file, &dest, |_| {}).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
}

/// The relay cannot read a part of a complete blob for a while (it answers `unavailable`, as
/// it does when its storage fails, or when it goes away mid-request) while the parts after it
/// are asked for: the download pauses, asks for that part again, goes on, and the file
/// arrives whole.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_unreadable_for_a_while_is_asked_again_and_the_download_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let alice = person(dir.path(), &relay, &relay, "alice").await;
    // 12 parts: part 5 is asked for together with the parts after it (a window is 8 parts).
    let (path, bytes) = a_file(dir.path(), "big.bin", 12 * 262_128);
    let handle = alice.one.handle();
    let file = handle.upload_file(&path, &|_| {}).await.unwrap();
    // Part 5 moves aside on the relay's disk and a link to itself takes its place: reading
    // it fails (and not as a missing file), so the relay answers `unavailable`.
    let (part, _) = files_under(&relay.data.join("blobs"))
        .into_iter()
        .find(|(p, _)| p.file_name().unwrap() == "5")
        .expect("the blob's sixth part on the relay's disk");
    let aside = part.with_file_name("5.aside");
    std::fs::rename(&part, &aside).unwrap();
    std::os::unix::fs::symlink("5", &part).unwrap();
    let dest = dir.path().join("big.out");
    let download = handle.save_file(&file, &dest, |_| {});
    // Once the relay refused it: the part comes back (renamed over the link in one step, so
    // no read finds it missing), and can be read when asked for again.
    let unblock = async {
        let deadline = tokio::time::Instant::now() + support::WAIT;
        while !relay.metrics().contains("code=\"unavailable\"") {
            assert!(tokio::time::Instant::now() < deadline, "no part refused");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        std::fs::rename(&aside, &part).unwrap();
    };
    let (saved, ()) = tokio::join!(download, unblock);
    saved.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    assert!(!dir.path().join("big.out.ferry-part").exists());
}
