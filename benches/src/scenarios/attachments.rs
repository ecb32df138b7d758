//! `attachments`: a file's upload and download through the relay, in MiB/s, against a plain
//! copy of the same bytes on the same disk (issue 12).
//!
//! # Method
//!
//! One temporary folder (under the system's temporary folder, on disk: the note names its
//! filesystem) holds everything: the file, its copies, the device's state, an in-process
//! relay's data folder (SQLite, or PostgreSQL with `--backend postgres`) whose blobs go to
//! its default folder storage (`DATA_DIR/blobs`), and a scratch blob folder. The relay's
//! attachment limits are raised (size, quota, parts per second: the default bandwidth limit
//! of 400 parts a second is 100 MiB/s per device) so that they do not bind. One user with one
//! device, made with `ferry_client::account::create` and connected with `Client::connect`
//! (default options): the uploader's own user may read its blob, so no conversation is needed.
//!
//! The file is `--file-mib` MiB of random bytes (64; `--quick` [`QUICK_MIB`]), written and fsynced before
//! anything is timed, so it is read from the page cache by every figure. Then [`ROUNDS`]
//! rounds, each timing, one after the other:
//!
//! - **plain copy**: `std::fs::copy` of the file to another file in the same folder, then
//!   `File::sync_all` on the copy;
//! - **sealing only**: what the client's cryptography costs, in memory: every chunk sealed
//!   with `FileKey::seal_chunk` and the sealed parts hashed with SHA-256 (one core);
//! - **relay storage alone**: the sealed parts (made untimed) stored one by one with the
//!   relay's `FolderStorage::put_part` (each part written to a temporary file, fsynced,
//!   renamed, the folder fsynced), as the relay stores an upload;
//! - **relay digest check alone**: those parts read back with `get_part` and hashed, as the
//!   relay checks the digest when the last part of an upload arrives;
//! - **upload through the relay**: `ClientHandle::upload_file` (the SDK reads the file twice:
//!   seal and hash, then seal and put the parts, 8 in flight), wall time;
//! - **download through the relay**: `ClientHandle::save_file` to a new file in the same
//!   folder (parts fetched 8 in flight, each opened, written, the whole checked against the
//!   digest, fsynced and renamed), wall time; the downloaded file must equal the original,
//!   or the scenario fails.
//!
//! Every figure is the file's size (plaintext MiB) divided by the time; the table shows the
//! median of the rounds, and the ratios upload ÷ plain copy and download ÷ plain copy of the
//! medians; a note gives each figure's range over the rounds. The SDK's progress reports
//! split the two wall times: an upload reports first once its blob is created (after the
//! first pass), a download reports the whole file once its last part is written (before the
//! flush, fsync and rename), so the table also shows those phases in milliseconds; and the
//! process's CPU time over each (`/proc/self/stat`, 10 ms ticks: client and relay together),
//! in cores, to tell a CPU-bound transfer from one that waits.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use ferry_client::{Client, Progress};
use ferry_protocol::attachments::{BlobId, CHUNK_LEN, FileKey};
use ferry_relay::attachments::{BlobStorage as _, FolderStorage};
use rand_core::{OsRng, RngCore as _};
use sha2::{Digest as _, Sha256};

use super::Options;
use crate::cpu::process_cpu_seconds;
use crate::progress::step;
use crate::relay::{BenchRelay, NodeOptions};
use crate::report::{Report, median, number};

const NAME: &str = "attachments";
/// Times each figure is measured in one run.
pub const ROUNDS: usize = 3;
/// The file's size with `--quick`: 9 parts, one more than the SDK's window of 8 in flight,
/// and small enough for a debug build to finish in a few seconds (sealing runs at about
/// 7 MiB/s there, against hundreds in release).
pub const QUICK_MIB: u64 = 2;
/// Bytes in a MiB.
const MIB: u64 = 1024 * 1024;

/// One round's times.
#[derive(Clone, Copy, Debug)]
struct Round {
    copy: Duration,
    seal: Duration,
    store: Duration,
    check: Duration,
    upload: Duration,
    /// From the call to the first progress report (the blob created).
    upload_first_pass: Duration,
    /// The process's CPU time over the upload, in seconds (`None` without `/proc`).
    upload_cpu: Option<f64>,
    download: Duration,
    /// From the call to the progress report of the whole file written.
    download_parts: Duration,
    /// The process's CPU time over the download, in seconds.
    download_cpu: Option<f64>,
}

/// When an upload or a download first reported progress, and when it reported the whole
/// file done.
#[derive(Debug, Default)]
struct Marks {
    first: Mutex<Option<Instant>>,
    whole: Mutex<Option<Instant>>,
}

impl Marks {
    fn mark(&self, progress: Progress) {
        let now = Instant::now();
        let mut first = self.first.lock().unwrap_or_else(PoisonError::into_inner);
        first.get_or_insert(now);
        if progress.done == progress.total {
            let mut whole = self.whole.lock().unwrap_or_else(PoisonError::into_inner);
            whole.get_or_insert(now);
        }
    }

    fn first(&self) -> Option<Instant> {
        *self.first.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn whole(&self) -> Option<Instant> {
        *self.whole.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs the scenario.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let mib = options.pick(options.file_mib, 64, QUICK_MIB).max(1);
    let len = usize::try_from(mib * MIB).context("a file too large for this machine")?;
    let dir = tempfile::Builder::new()
        .prefix("ferry-bench-attachments-")
        .tempdir()
        .context("making the temporary folder")?;
    let files = dir.path().join("files");
    std::fs::create_dir(&files)?;

    step(NAME, "starting the relay, making a user");
    let relay = BenchRelay::spawn(
        &options.services,
        NodeOptions {
            data_dir: Some(dir.path().join("relay")),
            ..NodeOptions::default()
        },
    )
    .await?;
    let target = relay.target();
    let url = format!("ws://{}/ws", target.addr);
    let sdk = ferry_client::Options::default();
    let user =
        ferry_client::account::create(dir.path().join("device"), &url, target.relay, "bench", &sdk)
            .await
            .context("making the user")?;
    let client = Client::connect(user.state, sdk)
        .await
        .context("connecting the device")?;
    let handle = client.handle();

    step(NAME, format_args!("writing {mib} MiB of random bytes"));
    let source = files.join("original.bin");
    let original = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || random_file(&source, len)).await??
    };

    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 1..=ROUNDS {
        let label = format!("{NAME}, round {round} of {ROUNDS}");
        step(&label, "plain copy, sealing, the relay's storage alone");
        let copy = {
            let (source, dest) = (source.clone(), files.join(format!("copy-{round}.bin")));
            tokio::task::spawn_blocking(move || plain_copy(&source, &dest)).await??
        };
        let (seal, parts) = {
            let original = original.clone();
            tokio::task::spawn_blocking(move || seal_all(&original)).await?
        };
        let (store, check) = relay_storage(&dir.path().join("storage"), parts).await?;

        step(&label, "upload through the relay");
        let marks = Marks::default();
        let cpu = process_cpu_seconds();
        let started = Instant::now();
        let file = handle
            .upload_file(&source, &|p| marks.mark(p))
            .await
            .context("upload_file")?;
        let upload = started.elapsed();
        let upload_cpu = cpu.zip(process_cpu_seconds()).map(|(a, b)| b - a);
        let upload_first_pass = marks
            .first()
            .context("upload_file reported no progress")?
            .duration_since(started);
        if file.size != len as u64 {
            bail!("the upload says {} bytes, the file has {len}", file.size);
        }

        step(&label, "download through the relay");
        let dest = files.join(format!("download-{round}.bin"));
        let marks = Marks::default();
        let cpu = process_cpu_seconds();
        let started = Instant::now();
        handle
            .save_file(&file, &dest, |p| marks.mark(p))
            .await
            .context("save_file")?;
        let download = started.elapsed();
        let download_cpu = cpu.zip(process_cpu_seconds()).map(|(a, b)| b - a);
        let download_parts = marks
            .whole()
            .context("save_file never reported the whole file")?
            .duration_since(started);
        check_same(&dest, &original).await?;

        rounds.push(Round {
            copy,
            seal,
            store,
            check,
            upload,
            upload_first_pass,
            upload_cpu,
            download,
            download_parts,
            download_cpu,
        });
    }

    drop(handle);
    if let Err(e) = client.close().await {
        step(NAME, format_args!("closing the device: {e}"));
    }
    relay.shutdown(Duration::from_secs(5)).await;

    let mut report = Report::default();
    let rate = |time: Duration| mib as f64 / time.as_secs_f64();
    let figure = |report: &mut Report, measure: &str, of: fn(&Round) -> Duration| {
        let rates: Vec<f64> = rounds.iter().map(|r| rate(of(r))).collect();
        let median = median(&rates);
        report.add(
            NAME,
            format!("{measure}, median of {ROUNDS}"),
            median,
            "MiB/s",
        );
        (median, range(&rates))
    };
    let copy = figure(&mut report, "plain copy (fs::copy + fsync)", |r: &Round| {
        r.copy
    });
    let seal = figure(
        &mut report,
        "sealing only (seal_chunk + SHA-256, in memory)",
        |r: &Round| r.seal,
    );
    let store = figure(
        &mut report,
        "relay storage alone (put_part of every part)",
        |r: &Round| r.store,
    );
    let check = figure(
        &mut report,
        "relay digest check alone (get_part + SHA-256)",
        |r: &Round| r.check,
    );
    let upload = figure(
        &mut report,
        "upload through the relay (upload_file)",
        |r: &Round| r.upload,
    );
    let download = figure(
        &mut report,
        "download through the relay (save_file)",
        |r: &Round| r.download,
    );
    report.add(NAME, "upload ÷ plain copy", upload.0 / copy.0, "×");
    report.add(NAME, "download ÷ plain copy", download.0 / copy.0, "×");
    let phase = |report: &mut Report, measure: &str, of: fn(&Round) -> Duration| {
        let ms: Vec<f64> = rounds.iter().map(|r| of(r).as_secs_f64() * 1e3).collect();
        report.add(
            NAME,
            format!("{measure}, median of {ROUNDS}"),
            median(&ms),
            "ms",
        );
        range(&ms)
    };
    let cores = |report: &mut Report, measure: &str, of: fn(&Round) -> (Option<f64>, Duration)| {
        let used: Vec<f64> = rounds
            .iter()
            .filter_map(|r| {
                let (cpu, wall) = of(r);
                Some(cpu? / wall.as_secs_f64())
            })
            .collect();
        if used.len() == rounds.len() {
            report.add(
                NAME,
                format!("{measure}, median of {ROUNDS}"),
                median(&used),
                "cores",
            );
        }
    };
    cores(
        &mut report,
        "process CPU during the upload (client + relay)",
        |r: &Round| (r.upload_cpu, r.upload),
    );
    cores(
        &mut report,
        "process CPU during the download (client + relay)",
        |r: &Round| (r.download_cpu, r.download),
    );
    let phases = [
        phase(
            &mut report,
            "upload: first pass (read, seal, SHA-256) and BlobCreate",
            |r: &Round| r.upload_first_pass,
        ),
        phase(
            &mut report,
            "upload: second pass (read, seal, parts put 8 in flight, relay digest check)",
            |r: &Round| r.upload.saturating_sub(r.upload_first_pass),
        ),
        phase(
            &mut report,
            "download: parts fetched 8 in flight, opened, written",
            |r: &Round| r.download_parts,
        ),
        phase(
            &mut report,
            "download: flush, fsync, rename",
            |r: &Round| r.download.saturating_sub(r.download_parts),
        ),
    ];
    let ratios = |of: fn(&Round) -> Duration| -> (f64, f64) {
        range(
            &rounds
                .iter()
                .map(|r| r.copy.as_secs_f64() / of(r).as_secs_f64())
                .collect::<Vec<_>>(),
        )
    };
    let up_ratio = ratios(|r| r.upload);
    let down_ratio = ratios(|r| r.download);
    let span = |(min, max): (f64, f64)| format!("{} – {}", number(min), number(max));
    report.note(format!(
        "attachments: a file of {mib} MiB of random bytes, {ROUNDS} rounds (each: copy, seal, \
         store, check, upload, download); figures are MiB of the file per second of wall time. \
         Ranges over the rounds (min – max), MiB/s: plain copy {}, sealing {}, relay storage \
         {}, digest check {}, upload {}, download {}; round by round, upload ÷ copy {} ×, \
         download ÷ copy {} ×; ms: upload first pass {}, second pass {}, download parts {}, \
         flush + fsync + rename {}",
        span(copy.1),
        span(seal.1),
        span(store.1),
        span(check.1),
        span(upload.1),
        span(download.1),
        span(up_ratio),
        span(down_ratio),
        span(phases[0]),
        span(phases[1]),
        span(phases[2]),
        span(phases[3]),
    ));
    report.note(format!(
        "attachments: file, copies, download, relay data folder (blobs in DATA_DIR/blobs) and \
         the storage-alone folder all in {} ({}); one device, relay and client in this \
         process; the relay's attachment size, quota and parts-per-second limits raised",
        dir.path().display(),
        filesystem(dir.path()),
    ));
    Ok(report)
}

/// Writes `len` random bytes to `path`, fsynced; returns them.
fn random_file(path: &Path, len: usize) -> anyhow::Result<Bytes> {
    let mut bytes = vec![0; len];
    OsRng.fill_bytes(&mut bytes);
    std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    File::open(path)?.sync_all()?;
    Ok(Bytes::from(bytes))
}

/// `std::fs::copy` of `source` to `dest`, then the copy fsynced; the copy is removed after.
fn plain_copy(source: &Path, dest: &Path) -> anyhow::Result<Duration> {
    let started = Instant::now();
    std::fs::copy(source, dest).with_context(|| format!("copying to {}", dest.display()))?;
    OpenOptions::new().write(true).open(dest)?.sync_all()?;
    let elapsed = started.elapsed();
    std::fs::remove_file(dest)?;
    Ok(elapsed)
}

/// Every chunk of `plain` sealed under a fresh key and the sealed parts hashed, one part at a
/// time as the SDK's first pass does (without reading a file); the time. Then, untimed, the
/// sealed parts kept, for the storage figures.
fn seal_all(plain: &[u8]) -> (Duration, Vec<Bytes>) {
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    let key = FileKey(key);
    let chunks = plain.len().div_ceil(CHUNK_LEN).max(1);
    let started = Instant::now();
    let mut hasher = Sha256::new();
    for (index, chunk) in plain.chunks(CHUNK_LEN).enumerate() {
        let sealed = key.seal_chunk(index as u64, index + 1 == chunks, chunk);
        hasher.update(&sealed);
    }
    std::hint::black_box(hasher.finalize());
    let elapsed = started.elapsed();
    let parts = plain
        .chunks(CHUNK_LEN)
        .enumerate()
        .map(|(index, chunk)| Bytes::from(key.seal_chunk(index as u64, index + 1 == chunks, chunk)))
        .collect();
    (elapsed, parts)
}

/// The relay's folder storage alone: `parts` stored one by one under a fresh blob in `root`,
/// then read back and hashed (the digest check); both times. The blob is deleted after.
async fn relay_storage(root: &Path, parts: Vec<Bytes>) -> anyhow::Result<(Duration, Duration)> {
    let storage = FolderStorage::new(root.to_path_buf());
    let mut id = [0u8; 32];
    OsRng.fill_bytes(&mut id);
    let blob = BlobId(id);
    let count = u32::try_from(parts.len()).context("too many parts")?;
    let started = Instant::now();
    for (index, part) in (0..count).zip(parts) {
        storage
            .put_part(&blob, index, part)
            .await
            .context("put_part")?;
    }
    let store = started.elapsed();
    let started = Instant::now();
    let mut hasher = Sha256::new();
    for index in 0..count {
        let part = storage
            .get_part(&blob, index)
            .await
            .context("get_part")?
            .context("a part just stored is missing")?;
        hasher.update(&part);
    }
    std::hint::black_box(hasher.finalize());
    let check = started.elapsed();
    storage.delete(&blob, count).await?;
    Ok((store, check))
}

/// Fails unless the file at `dest` holds `original`, then removes it (and checks that the
/// partial file is gone).
async fn check_same(dest: &Path, original: &[u8]) -> anyhow::Result<()> {
    let saved = tokio::fs::read(dest)
        .await
        .with_context(|| format!("reading {}", dest.display()))?;
    if saved != original {
        let first = saved
            .iter()
            .zip(original)
            .position(|(a, b)| a != b)
            .unwrap_or(saved.len().min(original.len()));
        bail!(
            "the downloaded file differs from the original ({} bytes against {}, first \
             difference at byte {first})",
            saved.len(),
            original.len()
        );
    }
    let partial = partial_path(dest);
    if partial.exists() {
        bail!("{} was left behind", partial.display());
    }
    tokio::fs::remove_file(dest).await?;
    Ok(())
}

/// Where `save_file` writes before it renames.
fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".ferry-part");
    dest.with_file_name(name)
}

/// The smallest and the largest of `values`.
fn range(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(min, max), &v| {
            (min.min(v), max.max(v))
        })
}

/// The filesystem `path` is on: its type and device, from `/proc/self/mountinfo` (the
/// longest mount point that holds it).
fn filesystem(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return "filesystem unknown".to_owned();
    };
    info.lines()
        .filter_map(|line| {
            // `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [TAGS…] - TYPE SOURCE SUPER_OPTIONS`
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let (kind, source) = (right.next()?, right.next()?);
            path.starts_with(mount_point).then(|| {
                (
                    mount_point.len(),
                    format!("{kind} on {source}, mounted at {mount_point}"),
                )
            })
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "filesystem unknown".to_owned(), |(_, what)| what)
}
