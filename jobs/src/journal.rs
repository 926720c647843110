//! The delivery journal: what each streaming job has sent its client, kept where a killed
//! process cannot lose it.
//!
//! A stream is charged for the tokens it delivered. When the process is killed mid-stream
//! nothing it held in memory survives, and a database write per token would cost a round trip
//! each; so every instance keeps a small file of fixed slots, one per streaming job, and
//! overwrites its slot's count (one `pwrite` into the page cache, which survives the process)
//! before each token goes out. The instance holds an exclusive lock on its file for its whole
//! life: the kernel drops the lock when the process dies, however it dies, so whoever can take
//! the lock knows at once that the writer is gone and may settle its jobs from the file.
//!
//! Slot layout (64 bytes, little-endian): magic `TMJ1`, delivered tokens (u32), input and
//! output rates (i64 nano-dollars per million tokens), the job id (32 ASCII bytes), padding.
//! A slot whose magic is zero is free. The count is written with one 4-byte write, which the
//! kernel copies whole.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::Rates;

const SLOT: u64 = 64;
const MAGIC: &[u8; 4] = b"TMJ1";
const ID_LEN: usize = 32;
const SUFFIX: &str = ".journal";

/// One job's entry in a dead instance's journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub job_id: String,
    pub delivered: u32,
    pub rates: Rates,
}

/// This instance's journal file, locked for as long as the value lives.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    /// Which slots are taken; a freed slot is reused, so the file stays as long as the most
    /// streams that ran at once.
    taken: Mutex<Vec<bool>>,
}

/// A job's slot in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(u64);

impl Journal {
    /// Creates (and locks) `dir/<instance>.journal`. The file is made and locked under a
    /// name no reader looks at, then renamed into place: a reader never finds it unlocked.
    pub fn open(dir: &Path, instance_id: &str) -> io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{instance_id}{SUFFIX}"));
        if path.exists() {
            return Err(io::Error::other(format!(
                "{} exists: instance ids must be new",
                path.display()
            )));
        }
        let fresh = dir.join(format!(".{instance_id}.new"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&fresh)?;
        file.try_lock()
            .map_err(|e| io::Error::other(format!("locking {}: {e}", fresh.display())))?;
        std::fs::rename(&fresh, &path)?;
        Ok(Journal {
            file,
            path,
            taken: Mutex::new(Vec::new()),
        })
    }

    /// Takes a free slot for `job_id` with its rates, counting nothing delivered yet.
    pub fn claim(&self, job_id: &str, rates: Rates) -> io::Result<Slot> {
        let id = job_id.as_bytes();
        if id.len() != ID_LEN {
            return Err(io::Error::other(format!(
                "job id {job_id:?} is not 32 bytes"
            )));
        }
        let index = {
            let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
            match taken.iter().position(|t| !t) {
                Some(i) => {
                    taken[i] = true;
                    i
                }
                None => {
                    taken.push(true);
                    taken.len() - 1
                }
            }
        };
        let mut record = [0u8; SLOT as usize];
        record[0..4].copy_from_slice(MAGIC);
        record[8..16].copy_from_slice(&rates.input_nanos_per_mtok.to_le_bytes());
        record[16..24].copy_from_slice(&rates.output_nanos_per_mtok.to_le_bytes());
        record[24..24 + ID_LEN].copy_from_slice(id);
        let slot = Slot(index as u64 * SLOT);
        if let Err(e) = self.file.write_all_at(&record, slot.0) {
            self.free(slot);
            return Err(e);
        }
        Ok(slot)
    }

    /// Records that `delivered` tokens of the slot's job have been handed to its client.
    pub fn record(&self, slot: Slot, delivered: u32) -> io::Result<()> {
        self.file.write_all_at(&delivered.to_le_bytes(), slot.0 + 4)
    }

    /// Frees the slot once its job is settled (a later reader skips it).
    pub fn release(&self, slot: Slot) {
        if let Err(e) = self.file.write_all_at(&[0u8; 4], slot.0) {
            tracing::warn!(error = %e, "clearing a journal slot failed");
        }
        self.free(slot);
    }

    fn free(&self, slot: Slot) {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = taken.get_mut((slot.0 / SLOT) as usize) {
            *t = false;
        }
    }

    /// Removes the file (a clean shutdown, with every job settled); the lock goes with the
    /// process.
    pub fn remove(&self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(error = %e, path = %self.path.display(), "removing the journal failed");
        }
    }
}

/// A journal in `dir` whose writer is gone (its lock could be taken), held locked so no other
/// instance reads it at the same time; [`DeadJournal::finish`] deletes it.
#[derive(Debug)]
pub struct DeadJournal {
    pub instance_id: String,
    pub entries: Vec<Entry>,
    file: File,
    path: PathBuf,
}

impl DeadJournal {
    /// Deletes the file once all its entries are settled, then lets go of the lock.
    pub fn finish(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(error = %e, path = %self.path.display(), "removing a dead journal failed");
        }
        drop(self.file);
    }
}

/// The journals in `dir` of instances that are no longer running (not `own`). A journal whose
/// lock is held belongs to a live process and is left alone.
pub fn dead_journals(dir: &Path, own: &str) -> io::Result<Vec<DeadJournal>> {
    let listing = match std::fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut dead = Vec::new();
    for item in listing {
        let path = item?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with('.') && name.ends_with(".new") {
            // A journal whose process died before it was renamed into place held nothing.
            if let Ok(f) = OpenOptions::new().read(true).open(&path)
                && f.try_lock().is_ok()
            {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        let Some(instance_id) = name.strip_suffix(SUFFIX).map(str::to_string) else {
            continue;
        };
        if instance_id == own {
            continue;
        }
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            // Removed meanwhile: a clean shutdown, or another reader finished it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if file.try_lock().is_err() {
            continue; // its process is alive
        }
        // Locked by us, but finished and removed by another reader between our listing and
        // our lock: nothing left to do.
        if !path.exists() {
            continue;
        }
        let entries = read_entries(&file)?;
        dead.push(DeadJournal {
            instance_id,
            entries,
            file,
            path,
        });
    }
    Ok(dead)
}

fn read_entries(file: &File) -> io::Result<Vec<Entry>> {
    let len = file.metadata()?.len();
    let mut entries = Vec::new();
    let mut record = [0u8; SLOT as usize];
    let mut at = 0;
    while at + SLOT <= len {
        file.read_exact_at(&mut record, at)?;
        at += SLOT;
        if &record[0..4] != MAGIC {
            continue;
        }
        let Ok(job_id) = std::str::from_utf8(&record[24..24 + ID_LEN]) else {
            continue;
        };
        let word = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&record[r]);
            i64::from_le_bytes(b)
        };
        entries.push(Entry {
            job_id: job_id.to_string(),
            delivered: u32::from_le_bytes([record[4], record[5], record[6], record[7]]),
            rates: Rates {
                input_nanos_per_mtok: word(8..16),
                output_nanos_per_mtok: word(16..24),
            },
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATES: Rates = Rates {
        input_nanos_per_mtok: 150_000_000,
        output_nanos_per_mtok: 600_000_000,
    };

    fn id(n: u8) -> String {
        format!("{:032x}", n)
    }

    #[test]
    fn a_live_journal_is_left_alone_and_a_dropped_one_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let live = Journal::open(dir.path(), "live").unwrap();
        let gone = Journal::open(dir.path(), "gone").unwrap();
        let a = gone.claim(&id(1), RATES).unwrap();
        let b = gone.claim(&id(2), RATES).unwrap();
        let c = gone.claim(&id(3), RATES).unwrap();
        gone.record(a, 7).unwrap();
        gone.record(b, 1).unwrap();
        gone.record(a, 9).unwrap();
        gone.release(b);
        // A freed slot is reused.
        let d = gone.claim(&id(4), RATES).unwrap();
        assert_eq!(d, b);
        gone.record(c, 3).unwrap();
        live.claim(&id(5), RATES).unwrap();

        // While both run, neither is dead.
        assert!(dead_journals(dir.path(), "another").unwrap().is_empty());
        drop(gone); // the process ends: the kernel drops its lock
        let dead = dead_journals(dir.path(), "live").unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].instance_id, "gone");
        let got: Vec<(String, u32)> = dead[0]
            .entries
            .iter()
            .map(|e| (e.job_id.clone(), e.delivered))
            .collect();
        assert_eq!(got, vec![(id(1), 9), (id(4), 0), (id(3), 3)]);
        assert_eq!(dead[0].entries[0].rates, RATES);
        // Held by its reader: a second reader skips it.
        assert!(dead_journals(dir.path(), "live").unwrap().is_empty());
        dead.into_iter().for_each(DeadJournal::finish);
        assert!(!dir.path().join("gone.journal").exists());
        live.remove();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_journal_cannot_be_opened_twice() {
        let dir = tempfile::tempdir().unwrap();
        let _one = Journal::open(dir.path(), "x").unwrap();
        // Same instance id: refused, and the first file is untouched.
        assert!(Journal::open(dir.path(), "x").is_err());
    }
}
