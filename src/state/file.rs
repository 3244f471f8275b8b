//! The file-backed [`QuotaStore`]: a snapshot and an append-only log of absolute totals in
//! `server.state_dir` (design and crash analysis: docs/quota-ledger.md).
//!
//! Files in the directory:
//! - `quota.snapshot`: a header line `ringway-quota-snapshot 1 <gen>`, then one record per
//!   token. Replaced only whole: written to `quota.snapshot.tmp`, fsynced, renamed over.
//! - `quota-<gen>.log`: records appended by each flush (one `fdatasync` per flush). The
//!   snapshot of generation `gen` contains everything of the logs before `gen`.
//! - `LOCK`: held with `flock` while a process uses the directory, so two relays cannot
//!   interleave their records (the kernel drops the lock when the holder dies, even by
//!   `kill -9`).
//!
//! A record is one line, `<crc32 hex> <total> <name as a JSON string>`, the checksum over what
//! follows it. A record holds the token's absolute settled total, so replay keeps the last
//! record per name and nothing can be counted twice however often a total was written.
//!
//! Key components: [`FileStore::open`] (lock, load the snapshot, replay the logs of its
//! generation and later, then compact into a fresh generation so a torn tail is never appended
//! to), `record` (append, `fdatasync`, compact past [`COMPACT_AT`]), `compact`.
//!
//! Error handling: a log line that is torn (no newline: the write a crash cut) or fails its
//! checksum is skipped with a WARN naming the file and line — a later record of the same token
//! supersedes it anyway. A damaged snapshot refuses the start instead: it is only ever replaced
//! whole, so damage there is not a torn write, and starting without it would hand spent quotas
//! back. A failed append is cut back off the log, so the next flush starts on a clean line.
//!
//! Must not: grow without bound (the log is compacted past [`COMPACT_AT`]; files over
//! [`MAX_FILE`] are refused at start), or allocate per flush once every name was seen.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::{QuotaStore, Settled};

/// The log is compacted into the snapshot once it is this long (and longer than the
/// snapshot, so many tokens do not make every flush a compaction).
pub const COMPACT_AT: u64 = 1 << 20;
/// Larger state files are refused at start (memory stays bounded whatever is on disk).
pub const MAX_FILE: u64 = 256 << 20;

const SNAPSHOT: &str = "quota.snapshot";
const SNAPSHOT_TMP: &str = "quota.snapshot.tmp";
const HEADER: &str = "ringway-quota-snapshot 1 ";

/// The ledger in one directory.
pub struct FileStore {
    dir: PathBuf,
    /// Held for the store's life: the directory's `flock`.
    _lock: File,
    /// The generation being appended to, its file and its length (all of it good records).
    gen: u64,
    log: File,
    log_len: u64,
    snapshot_len: u64,
    compact_at: u64,
    /// Every name's last recorded total (config tokens and names only found on disk).
    totals: HashMap<String, u64>,
    /// Reused for each flush's lines.
    buf: Vec<u8>,
    /// Records skipped at open (torn or failing their checksum).
    pub skipped: usize,
}

impl FileStore {
    /// Opens (creating it if missing) the ledger in `dir`: locks it, loads the snapshot,
    /// replays the logs, and starts a new generation. Every error names the path.
    pub fn open(dir: &Path) -> io::Result<FileStore> {
        FileStore::open_with(dir, COMPACT_AT)
    }

    /// [`FileStore::open`] compacting at `compact_at` log bytes (tests use a small one).
    pub fn open_with(dir: &Path, compact_at: u64) -> io::Result<FileStore> {
        let named = |what: &str, path: &Path, e: io::Error| {
            io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| named("cannot create state_dir", dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| named("cannot write in state_dir: cannot open", &lock_path, e))?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "state_dir {} is in use by another ringway process (its LOCK is held): {e}",
                    dir.display()
                ),
            ));
        }
        let mut totals = HashMap::new();
        let mut skipped = 0;
        let snapshot = dir.join(SNAPSHOT);
        let (mut gen, snapshot_len) = match read_capped(&snapshot)? {
            Some(bytes) => (
                load_snapshot(&snapshot, &bytes, &mut totals)?,
                bytes.len() as u64,
            ),
            None => (0, 0),
        };
        // Logs of the snapshot's generation and later, oldest first; older ones are already
        // in the snapshot (a compaction ended before deleting them).
        let mut logs = log_generations(dir)?;
        logs.sort_unstable();
        for &g in logs.iter().filter(|&&g| g >= gen) {
            let path = log_path(dir, g);
            if let Some(bytes) = read_capped(&path)? {
                skipped += replay_log(&path, &bytes, &mut totals);
            }
        }
        gen = logs.last().map_or(gen, |&g| g.max(gen));
        let log_file = log_path(dir, gen);
        let log = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&log_file)
            .map_err(|e| named("cannot open", &log_file, e))?;
        let mut store = FileStore {
            dir: dir.to_path_buf(),
            _lock: lock,
            gen,
            log,
            log_len: 0,
            snapshot_len,
            compact_at,
            totals,
            buf: Vec::with_capacity(4096),
            skipped,
        };
        // A fresh generation: whatever tail the last process left (torn or not) is in the
        // snapshot now, and is never appended to.
        store
            .compact()
            .map_err(|e| io::Error::new(e.kind(), format!("quota ledger: {e}")))?;
        Ok(store)
    }

    /// Writes every total into a new snapshot of the next generation and starts that
    /// generation's log. A crash at any point leaves either the old snapshot with its logs or
    /// the new snapshot: both hold everything recorded.
    fn compact(&mut self) -> io::Result<()> {
        let next = self.gen + 1;
        let mut names: Vec<(&String, &u64)> = self.totals.iter().collect();
        names.sort_unstable();
        let mut out = Vec::with_capacity(64 + names.len() * 48);
        out.extend_from_slice(format!("{HEADER}{next}\n").as_bytes());
        for (name, &total) in names {
            encode(&mut out, name, total);
        }
        let tmp = self.dir.join(SNAPSHOT_TMP);
        let named = |path: &Path, e: io::Error| {
            io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display()))
        };
        let mut f = File::create(&tmp).map_err(|e| named(&tmp, e))?;
        f.write_all(&out).map_err(|e| named(&tmp, e))?;
        f.sync_all().map_err(|e| named(&tmp, e))?;
        drop(f);
        let next_log = log_path(&self.dir, next);
        let log = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&next_log)
            .map_err(|e| named(&next_log, e))?;
        let snapshot = self.dir.join(SNAPSHOT);
        std::fs::rename(&tmp, &snapshot).map_err(|e| named(&snapshot, e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| named(&self.dir, e))?;
        // From here on the new snapshot is what a restart reads.
        let old = self.gen;
        self.gen = next;
        self.log = log;
        self.log_len = 0;
        self.snapshot_len = out.len() as u64;
        for g in log_generations(&self.dir)? {
            if g <= old {
                let _ = std::fs::remove_file(log_path(&self.dir, g));
            }
        }
        Ok(())
    }

    /// Appends `buf` to the log and makes it durable; on failure cuts the log back to its last
    /// good length so the next append starts on a clean line.
    fn append(&mut self) -> io::Result<()> {
        let path = || log_path(&self.dir, self.gen);
        let written = self
            .log
            .write_all(&self.buf)
            .and_then(|_| self.log.sync_data());
        if let Err(e) = written {
            let _ = self.log.set_len(self.log_len);
            let _ = self.log.seek(SeekFrom::Start(self.log_len));
            return Err(io::Error::new(
                e.kind(),
                format!("cannot append to {}: {e}", path().display()),
            ));
        }
        self.log_len += self.buf.len() as u64;
        Ok(())
    }
}

impl QuotaStore for FileStore {
    fn load(&mut self) -> io::Result<HashMap<String, u64>> {
        Ok(self.totals.clone())
    }

    fn record(&mut self, settled: &[Settled<'_>]) -> io::Result<()> {
        self.buf.clear();
        for s in settled {
            encode(&mut self.buf, s.name, s.total);
        }
        self.append()?;
        for s in settled {
            match self.totals.get_mut(s.name) {
                Some(t) => *t = s.total,
                None => {
                    self.totals.insert(s.name.to_string(), s.total);
                }
            }
        }
        if self.log_len > self.compact_at && self.log_len > self.snapshot_len {
            self.compact()?;
        }
        Ok(())
    }
}

fn log_path(dir: &Path, gen: u64) -> PathBuf {
    dir.join(format!("quota-{gen}.log"))
}

/// The generations of the `quota-<gen>.log` files in `dir`.
fn log_generations(dir: &Path) -> io::Result<Vec<u64>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot list {}: {e}", dir.display())))?;
    Ok(entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            name.strip_prefix("quota-")?
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .collect())
}

/// The file's bytes (`None` if it does not exist), refusing files over [`MAX_FILE`].
fn read_capped(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let named =
        |e: io::Error| io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()));
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(named(e)),
    };
    let mut bytes = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(named)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is larger than {MAX_FILE} bytes: not a ledger file ringway wrote",
                path.display()
            ),
        ));
    }
    Ok(Some(bytes))
}

/// The snapshot's records into `totals`; its generation. Any damage is an error.
fn load_snapshot(path: &Path, bytes: &[u8], totals: &mut HashMap<String, u64>) -> io::Result<u64> {
    let damaged = |line: usize, what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}:{line}: {what}; the snapshot is only ever replaced whole, so this is not a \
                 torn write: restore it from a backup (or move it away to start from the logs \
                 alone, which may hand spent quota back)",
                path.display()
            ),
        )
    };
    let mut lines = bytes.split_inclusive(|&b| b == b'\n');
    let header = lines.next().unwrap_or_default();
    let gen = std::str::from_utf8(header)
        .ok()
        .and_then(|h| h.strip_suffix('\n')?.strip_prefix(HEADER)?.parse().ok())
        .ok_or_else(|| damaged(1, "not a ringway quota snapshot header"))?;
    for (n, line) in lines.enumerate() {
        let record = line
            .strip_suffix(b"\n")
            .and_then(decode)
            .ok_or_else(|| damaged(n + 2, "damaged record"))?;
        totals.insert(record.0, record.1);
    }
    Ok(gen)
}

/// A log's records into `totals` (the last one per name wins); the number skipped as torn
/// or damaged, each with a WARN.
fn replay_log(path: &Path, bytes: &[u8], totals: &mut HashMap<String, u64>) -> usize {
    let mut skipped = 0;
    for (n, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        let record = line.strip_suffix(b"\n").and_then(decode);
        match record {
            Some((name, total)) => {
                totals.insert(name, total);
            }
            None => {
                skipped += 1;
                let why = if line.ends_with(b"\n") {
                    "fails its checksum or format"
                } else {
                    "is torn (no end of line: a write cut by a crash)"
                };
                crate::log::warn(&format!(
                    "quota ledger: {}:{}: record ignored, it {why}",
                    path.display(),
                    n + 1
                ));
            }
        }
    }
    skipped
}

/// Appends the record line for `name` at `total` to `out`.
fn encode(out: &mut Vec<u8>, name: &str, total: u64) {
    let at = out.len();
    out.extend_from_slice(b"00000000 ");
    let body = out.len();
    let _ = write!(out, "{total} ");
    crate::error::json_string(out, name);
    let crc = crc32(&out[body..]);
    let _ = write!(&mut out[at..at + 8], "{crc:08x}");
    out.push(b'\n');
}

/// A record line (without its newline), if its checksum and format hold.
fn decode(line: &[u8]) -> Option<(String, u64)> {
    let text = std::str::from_utf8(line).ok()?;
    let (crc, body) = text.split_once(' ')?;
    if crc.len() != 8 || u32::from_str_radix(crc, 16).ok()? != crc32(body.as_bytes()) {
        return None;
    }
    let (total, name) = body.split_once(' ')?;
    Some((serde_json::from_str(name).ok()?, total.parse().ok()?))
}

/// CRC-32 (IEEE 802.3, as zlib), table-driven.
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    !data.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(stem: &str) -> PathBuf {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d =
            std::env::temp_dir().join(format!("ringway-state-{}-{n}-{stem}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn rec<'a>(name: &'a str, total: u64) -> Settled<'a> {
        Settled {
            name,
            total,
            delta: 0,
        }
    }

    fn totals(dir: &Path) -> HashMap<String, u64> {
        FileStore::open(dir).unwrap().load().unwrap()
    }

    fn map(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
        pairs.iter().map(|(n, t)| (n.to_string(), *t)).collect()
    }

    #[test]
    fn crc32_is_the_standard_one() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn records_round_trip_any_name() {
        let mut out = Vec::new();
        for name in [
            "team-a",
            "with space",
            "quote\"and\\back",
            "new\nline",
            "ünï",
        ] {
            out.clear();
            encode(&mut out, name, 12345);
            assert_eq!(out.last(), Some(&b'\n'));
            assert_eq!(
                out.iter().filter(|&&b| b == b'\n').count(),
                1,
                "one line per record"
            );
            let line = &out[..out.len() - 1];
            assert_eq!(decode(line), Some((name.to_string(), 12345)));
            // Any one flipped byte is caught.
            for i in 0..line.len() {
                let mut bad = line.to_vec();
                bad[i] ^= 0x04;
                assert_ne!(decode(&bad), Some((name.to_string(), 12345)), "byte {i}");
            }
        }
    }

    #[test]
    fn replay_keeps_the_last_total_per_name_and_survives_restarts() {
        let dir = temp_dir("replay");
        {
            let mut s = FileStore::open(&dir).unwrap();
            assert!(s.load().unwrap().is_empty());
            s.record(&[rec("a", 16), rec("b", 5)]).unwrap();
            s.record(&[rec("a", 32)]).unwrap();
            s.record(&[rec("a", 48), rec("b", 7)]).unwrap();
        }
        assert_eq!(totals(&dir), map(&[("a", 48), ("b", 7)]));
        // Reopened again (another compaction at start): still the same, nothing doubled.
        assert_eq!(totals(&dir), map(&[("a", 48), ("b", 7)]));
        // A name no longer configured keeps its record through later flushes and compactions.
        {
            let mut s = FileStore::open_with(&dir, 64).unwrap();
            for t in 1..50 {
                s.record(&[rec("c", t)]).unwrap();
            }
        }
        assert_eq!(totals(&dir), map(&[("a", 48), ("b", 7), ("c", 49)]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn compaction_bounds_the_files_and_loses_nothing() {
        let dir = temp_dir("compact");
        let mut s = FileStore::open_with(&dir, 256).unwrap();
        for t in 1..=2000u64 {
            s.record(&[rec("a", t * 16), rec("b", t)]).unwrap();
            assert!(s.log_len <= 256 + 64, "log at {}", s.log_len);
        }
        drop(s);
        let files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files.len(), 3, "{files:?}"); // LOCK, snapshot, one log
        assert_eq!(totals(&dir), map(&[("a", 32000), ("b", 2000)]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_crash_at_any_step_of_a_compaction_loses_nothing() {
        let dir = temp_dir("crash");
        {
            let mut s = FileStore::open(&dir).unwrap();
            s.record(&[rec("a", 10)]).unwrap();
            s.record(&[rec("a", 20), rec("b", 1)]).unwrap();
        }
        let gen = {
            let mut g = log_generations(&dir).unwrap();
            g.sort();
            *g.last().unwrap()
        };
        let log = std::fs::read(log_path(&dir, gen)).unwrap();
        let snapshot = std::fs::read(dir.join(SNAPSHOT)).unwrap();
        // 1. The temp snapshot was written (even half), nothing renamed: the old state holds.
        std::fs::write(dir.join(SNAPSHOT_TMP), b"ringway-quota-snapshot 1 99\ngarb").unwrap();
        std::fs::write(log_path(&dir, gen + 1), b"").unwrap();
        assert_eq!(totals(&dir), map(&[("a", 20), ("b", 1)]));
        // 2. Renamed, old log not deleted yet: the old log is older than the snapshot and is
        // not replayed over it (a stale record of "a" there must not win).
        let dir2 = temp_dir("crash2");
        std::fs::create_dir_all(&dir2).unwrap();
        let mut newer = Vec::new();
        newer.extend_from_slice(format!("{HEADER}{}\n", gen + 1).as_bytes());
        encode(&mut newer, "a", 30);
        encode(&mut newer, "b", 1);
        std::fs::write(dir2.join(SNAPSHOT), &newer).unwrap();
        std::fs::write(log_path(&dir2, gen), &log).unwrap();
        assert_eq!(totals(&dir2), map(&[("a", 30), ("b", 1)]));
        assert!(!log_path(&dir2, gen).exists(), "the stale log is removed");
        // 3. Nothing but the snapshot we started from and its log: as recorded.
        let dir3 = temp_dir("crash3");
        std::fs::create_dir_all(&dir3).unwrap();
        std::fs::write(dir3.join(SNAPSHOT), &snapshot).unwrap();
        std::fs::write(log_path(&dir3, gen), &log).unwrap();
        assert_eq!(totals(&dir3), map(&[("a", 20), ("b", 1)]));
        for d in [dir, dir2, dir3] {
            let _ = std::fs::remove_dir_all(&d);
        }
    }

    #[test]
    fn a_torn_or_damaged_log_record_is_skipped_and_never_appended_to() {
        let dir = temp_dir("torn");
        {
            let mut s = FileStore::open(&dir).unwrap();
            s.record(&[rec("a", 16)]).unwrap();
            s.record(&[rec("a", 32), rec("b", 3)]).unwrap();
        }
        let gen = *log_generations(&dir).unwrap().iter().max().unwrap();
        let path = log_path(&dir, gen);
        let mut bytes = std::fs::read(&path).unwrap();
        // A damaged full line, then a torn last one (a later total for "a", cut short).
        bytes.extend_from_slice(b"deadbeef 999 \"b\"\n");
        let mut torn = Vec::new();
        encode(&mut torn, "a", 48);
        bytes.extend_from_slice(&torn[..torn.len() - 5]);
        std::fs::write(&path, &bytes).unwrap();
        let mut s = FileStore::open(&dir).unwrap();
        assert_eq!(s.skipped, 2);
        assert_eq!(s.load().unwrap(), map(&[("a", 32), ("b", 3)]));
        // New records land on a clean line of a new generation.
        s.record(&[rec("a", 64)]).unwrap();
        drop(s);
        let s = FileStore::open(&dir).unwrap();
        assert_eq!(s.skipped, 0);
        assert_eq!(s.totals, map(&[("a", 64), ("b", 3)]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_snapshot_or_a_held_lock_refuses_to_open() {
        let dir = temp_dir("damaged");
        {
            let mut s = FileStore::open(&dir).unwrap();
            s.record(&[rec("a", 16)]).unwrap();
            // A second store on the same directory is refused while the first holds it.
            let e = FileStore::open(&dir).err().expect("second open refused");
            assert!(e.to_string().contains("in use by another"), "{e}");
        }
        // Reopened: the snapshot now holds the record.
        drop(FileStore::open(&dir).unwrap());
        let snap = dir.join(SNAPSHOT);
        let mut bytes = std::fs::read(&snap).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 1;
        std::fs::write(&snap, &bytes).unwrap();
        let e = FileStore::open(&dir)
            .err()
            .expect("damaged snapshot refused");
        assert!(
            e.to_string().contains("quota.snapshot:2: damaged record"),
            "{e}"
        );
        std::fs::write(&snap, b"hello\n").unwrap();
        let e = FileStore::open(&dir).err().expect("bad header refused");
        assert!(
            e.to_string().contains(":1: not a ringway quota snapshot"),
            "{e}"
        );
        // A state_dir under a regular file cannot be created: the error names it.
        let file = dir.join("plain");
        std::fs::write(&file, b"x").unwrap();
        let e = FileStore::open(&file.join("sub")).err().expect("refused");
        assert!(e.to_string().contains("cannot create state_dir"), "{e}");
        assert!(e.to_string().contains("plain/sub"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
