//! The corrections store: an SQLite file (`routing.store`) holding the
//! queries whose level a user or the cascade corrected, one row per query
//! (the latest correction wins), bounded to the newest `routing.store_max`.
//!
//! SQLite rather than a single-process store because MCP over stdio starts
//! one server per client: several servers on one machine share the file,
//! and SQLite's locking (WAL, a busy timeout) lets them all write to it.

use super::{Domain, Level};
use rusqlite::{params, Connection, ErrorCode, OpenFlags};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What made a correction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A caller's force_escalate: the strongest signal.
    ForceEscalate,
    /// A cascade that escalated and then met a higher tier's threshold.
    Cascade,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::ForceEscalate => "force_escalate",
            Source::Cascade => "cascade",
        }
    }

    fn parse(s: &str) -> Option<Source> {
        match s {
            "force_escalate" => Some(Source::ForceEscalate),
            "cascade" => Some(Source::Cascade),
            _ => None,
        }
    }
}

/// One corrected query.
#[derive(Debug, Clone, PartialEq)]
pub struct Correction {
    pub query: String,
    pub level: Level,
    pub domain: Domain,
    pub source: Source,
}

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create {dir}: {source}")]
    Folder {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is read-only")]
    ReadOnly { path: PathBuf },
    #[error("{path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{path} was corrupt and could not be moved aside: {source}")]
    MoveAside {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An open store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    max: usize,
}

/// An opened store, and the corrupt file it replaced, if any.
pub struct Opened {
    pub store: Store,
    pub moved_aside: Option<PathBuf>,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS corrections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    query TEXT NOT NULL UNIQUE,
    level TEXT NOT NULL,
    domain TEXT NOT NULL,
    source TEXT NOT NULL,
    at_ms INTEGER NOT NULL
)";

impl Store {
    /// Opens (or creates) the store at `path`, keeping at most `max`
    /// corrections. A file that is not a sound SQLite database is renamed
    /// to `<path>.corrupt-<unix seconds>` and a fresh store begun.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the folder cannot be created, the file is
    /// read-only, or SQLite cannot open or write it for another reason.
    pub fn open(path: &Path, max: usize) -> Result<Opened, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Folder {
                dir: dir.to_path_buf(),
                source,
            })?;
        }
        match Store::try_open(path, max) {
            Err(StoreError::Sqlite { source, .. }) if is_corrupt(&source) => {
                let aside = move_aside(path)?;
                let store = Store::try_open(path, max)?;
                Ok(Opened {
                    store,
                    moved_aside: Some(aside),
                })
            }
            other => other.map(|store| Opened {
                store,
                moved_aside: None,
            }),
        }
    }

    fn try_open(path: &Path, max: usize) -> Result<Store, StoreError> {
        let sqlite = |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(sqlite)?;
        if conn.is_readonly("main").map_err(sqlite)? {
            return Err(StoreError::ReadOnly {
                path: path.to_path_buf(),
            });
        }
        conn.busy_timeout(Duration::from_secs(5)).map_err(sqlite)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(sqlite)?;
        if check != "ok" {
            return Err(sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(check),
            )));
        }
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
            .map_err(sqlite)?;
        conn.execute_batch(SCHEMA).map_err(sqlite)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            max,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `c`, replacing an earlier correction of the same query, and
    /// drops the oldest beyond the bound.
    ///
    /// # Errors
    ///
    /// [`StoreError::Sqlite`] when the write fails (a full disk, a lock held
    /// past the busy timeout).
    pub fn add(&mut self, c: &Correction) -> Result<(), StoreError> {
        let path = self.path.clone();
        let sqlite = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let tx = self.conn.transaction().map_err(&sqlite)?;
        tx.execute("DELETE FROM corrections WHERE query = ?1", [&c.query])
            .map_err(&sqlite)?;
        tx.execute(
            "INSERT INTO corrections (query, level, domain, source, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![c.query, c.level.as_str(), c.domain.as_str(), c.source.as_str(), at_ms],
        )
        .map_err(&sqlite)?;
        tx.execute(
            "DELETE FROM corrections WHERE id NOT IN
                (SELECT id FROM corrections ORDER BY id DESC LIMIT ?1)",
            [self.max as i64],
        )
        .map_err(&sqlite)?;
        tx.commit().map_err(&sqlite)
    }

    /// A number that changes when another connection (another server
    /// process) commits to the store.
    ///
    /// # Errors
    ///
    /// [`StoreError::Sqlite`] when the read fails.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|source| StoreError::Sqlite {
                path: self.path.clone(),
                source,
            })
    }

    /// Every correction kept, oldest first. Rows whose level, domain or
    /// source this version does not know (a newer writer) are skipped.
    ///
    /// # Errors
    ///
    /// [`StoreError::Sqlite`] when the read fails.
    pub fn all(&self) -> Result<Vec<Correction>, StoreError> {
        let sqlite = |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        };
        let mut stmt = self
            .conn
            .prepare(
                "SELECT query, level, domain, source FROM corrections ORDER BY id DESC LIMIT ?1",
            )
            .map_err(sqlite)?;
        let rows = stmt
            .query_map([self.max as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(sqlite)?;
        let mut out = Vec::new();
        for row in rows {
            let (query, level, domain, source) = row.map_err(sqlite)?;
            let level = Level::ALL.into_iter().find(|l| l.as_str() == level);
            let domain = Domain::ALL.into_iter().find(|d| d.as_str() == domain);
            if let (Some(level), Some(domain), Some(source)) =
                (level, domain, Source::parse(&source))
            {
                out.push(Correction {
                    query,
                    level,
                    domain,
                    source,
                });
            }
        }
        out.reverse();
        Ok(out)
    }
}

fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    )
}

/// Renames a corrupt store (and its WAL files) out of the way.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{secs}"));
    let aside = PathBuf::from(aside);
    std::fs::rename(path, &aside).map_err(|source| StoreError::MoveAside {
        path: path.to_path_buf(),
        source,
    })?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(side));
    }
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(query: &str, level: Level, source: Source) -> Correction {
        Correction {
            query: query.into(),
            level,
            domain: Domain::General,
            source,
        }
    }

    #[test]
    fn corrections_survive_reopening_and_the_latest_per_query_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/routing.db");
        {
            let mut s = Store::open(&path, 10).unwrap().store;
            s.add(&fix("a", Level::Medium, Source::Cascade)).unwrap();
            s.add(&fix("b", Level::Complex, Source::ForceEscalate))
                .unwrap();
            s.add(&fix("a", Level::Expert, Source::ForceEscalate))
                .unwrap();
        }
        let opened = Store::open(&path, 10).unwrap();
        assert!(opened.moved_aside.is_none());
        assert_eq!(
            opened.store.all().unwrap(),
            vec![
                fix("b", Level::Complex, Source::ForceEscalate),
                fix("a", Level::Expert, Source::ForceEscalate),
            ]
        );
    }

    #[test]
    fn the_oldest_go_first_beyond_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("r.db"), 3).unwrap().store;
        for q in ["1", "2", "3", "4", "5"] {
            s.add(&fix(q, Level::Simple, Source::Cascade)).unwrap();
        }
        let kept: Vec<String> = s.all().unwrap().into_iter().map(|c| c.query).collect();
        assert_eq!(kept, ["3", "4", "5"]);
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_a_fresh_store_begun() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routing.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let opened = Store::open(&path, 10).unwrap();
        let aside = opened.moved_aside.expect("moved aside");
        assert_eq!(std::fs::read(&aside).unwrap(), vec![0x5a; 8192]);
        let mut s = opened.store;
        s.add(&fix("q", Level::Trivial, Source::Cascade)).unwrap();
        assert_eq!(s.all().unwrap().len(), 1);
    }

    #[test]
    fn an_unwritable_location_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        // A folder cannot be created under a plain file.
        let err = Store::open(&file.join("routing.db"), 10)
            .err()
            .expect("an error");
        assert!(err.to_string().contains("a-file"), "{err}");
    }
}
