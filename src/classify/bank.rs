//! Labeled example files: one JSON object per line with `query`, `level`
//! and `domain`. Blank lines are skipped. A malformed line, an unknown
//! level or domain, an empty query, or the same query labeled two ways is
//! an error naming the file, the line and the value.

use super::{Domain, Level};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One labeled query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    pub query: String,
    pub level: Level,
    pub domain: Domain,
}

/// Why an example file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    #[error("cannot read {file}: {reason}")]
    Read {
        file: PathBuf,
        reason: std::io::Error,
    },
    #[error("{file}:{line}: {what}")]
    Bad {
        file: PathBuf,
        line: usize,
        what: String,
    },
}

/// Reads the example file at `path`.
///
/// # Errors
///
/// [`BankError`]: unreadable, or a bad line.
pub fn load(path: &Path) -> Result<Vec<Example>, BankError> {
    let text = std::fs::read_to_string(path).map_err(|reason| BankError::Read {
        file: path.to_path_buf(),
        reason,
    })?;
    parse(path, &text)
}

/// Parses example lines; `file` names them in errors.
///
/// # Errors
///
/// [`BankError::Bad`] for the first bad line.
pub fn parse(file: &Path, text: &str) -> Result<Vec<Example>, BankError> {
    let mut out = Vec::new();
    let mut seen: HashMap<String, (usize, Level, Domain)> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let bad = |what: String| BankError::Bad {
            file: file.to_path_buf(),
            line: line_no,
            what,
        };
        if line.trim().is_empty() {
            continue;
        }
        // serde_json's own position is within the line: say the column only.
        let ex: Example = serde_json::from_str(line)
            .map_err(|e| bad(format!("{} (column {})", without_position(&e), e.column())))?;
        if !ex.query.chars().any(char::is_alphanumeric) {
            return Err(bad(format!(
                "query {:?} has no letters or digits",
                ex.query
            )));
        }
        let key = ex.query.trim().to_lowercase();
        match seen.get(&key) {
            Some(&(first, level, domain)) if (level, domain) != (ex.level, ex.domain) => {
                return Err(bad(format!(
                    "query {:?} is labeled {} / {} here but {} / {} on line {first}",
                    ex.query,
                    ex.level.as_str(),
                    ex.domain.as_str(),
                    level.as_str(),
                    domain.as_str()
                )));
            }
            Some(_) => continue,
            None => {
                seen.insert(key, (line_no, ex.level, ex.domain));
                out.push(ex);
            }
        }
    }
    Ok(out)
}

/// A serde_json message without its trailing " at line L column C".
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(Path::new("x.jsonl"), text).unwrap_err().to_string()
    }

    #[test]
    fn reads_examples_and_skips_blank_lines_and_exact_repeats() {
        let text = "{\"query\":\"Hi\",\"level\":\"trivial\",\"domain\":\"general\"}\n\n\
                    {\"query\":\"hi\",\"level\":\"trivial\",\"domain\":\"general\"}\n";
        let ex = parse(Path::new("x.jsonl"), text).unwrap();
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].level, Level::Trivial);
    }

    #[test]
    fn bad_lines_name_the_file_line_and_value() {
        let e = err("{\"query\":\"Hi\",\"level\":\"hard\",\"domain\":\"general\"}");
        assert!(e.starts_with("x.jsonl:1:") && e.contains("hard"), "{e}");
        let e = err("\n{\"query\":\"Hi\",\"level\":\"simple\",\"domain\":\"poetry\"}");
        assert!(e.starts_with("x.jsonl:2:") && e.contains("poetry"), "{e}");
        let e = err("{not json");
        assert!(e.starts_with("x.jsonl:1:"), "{e}");
        let e = err("{\"query\":\"?!\",\"level\":\"simple\",\"domain\":\"general\"}");
        assert!(e.contains("no letters or digits"), "{e}");
    }

    #[test]
    fn a_query_labeled_two_ways_names_both_lines() {
        let e = err(
            "{\"query\":\"Sort this\",\"level\":\"simple\",\"domain\":\"code\"}\n\
                     {\"query\":\"sort this\",\"level\":\"complex\",\"domain\":\"code\"}",
        );
        assert!(
            e.contains("x.jsonl:2:")
                && e.contains("complex / code here but simple / code on line 1"),
            "{e}"
        );
    }

    #[test]
    fn the_built_in_bank_and_dev_split_are_valid_and_disjoint() {
        let bank = parse(Path::new("bank.jsonl"), super::super::learned::BANK).unwrap();
        let dev = parse(
            Path::new("dev.jsonl"),
            include_str!("../../data/routing/dev.jsonl"),
        )
        .unwrap();
        assert!(bank.len() >= 400, "{}", bank.len());
        let train: std::collections::HashSet<_> =
            bank.iter().map(|e| e.query.to_lowercase()).collect();
        let words = |q: &str| -> std::collections::HashSet<String> {
            q.to_lowercase()
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(String::from)
                .collect()
        };
        for e in &dev {
            assert!(
                !train.contains(&e.query.to_lowercase()),
                "{:?} is in both",
                e.query
            );
            // Nor a paraphrase of it: at most 3 words in 4 shared.
            let d = words(&e.query);
            for b in &bank {
                let w = words(&b.query);
                let shared = d.intersection(&w).count() as f64;
                let overlap = shared / d.union(&w).count() as f64;
                assert!(
                    overlap < 0.75,
                    "dev {:?} and bank {:?} are near copies",
                    e.query,
                    b.query
                );
            }
        }
        for level in Level::ALL {
            for domain in Domain::ALL {
                let n = bank
                    .iter()
                    .filter(|e| e.level == level && e.domain == domain)
                    .count();
                assert!(n >= 10, "{level:?}/{domain:?} has {n} examples");
            }
        }
    }
}
