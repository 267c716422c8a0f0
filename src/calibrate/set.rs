//! Calibration sets: questions with accepted answers, one JSON object per
//! line, and the rules that score an answer.
//!
//! ```text
//! {"question": "What is the capital of France?", "contains": ["Paris"]}
//! {"question": "What is 7 times 8?", "regex": "(?:^|[^0-9.])56(?:[^0-9]|$)"}
//! {"question": "Answer yes or no: is 17 prime?", "exact": ["yes"]}
//! ```
//!
//! - `contains`: any of these appears in the answer as a whole word (or
//!   words), ignoring case; a plural `s` or `es` after it is allowed.
//! - `exact`: the whole answer, trimmed, lower-cased and without a final
//!   full stop, is one of these (lower-cased).
//! - `regex`: the answer matches this regular expression (Rust `regex`
//!   syntax, without look-around).

use regex::Regex;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A calibration file that cannot be used, naming the file and line.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: no questions (one JSON object per line: question and one of contains, exact, regex)")]
    Empty { path: PathBuf },
}

/// How an answer is accepted.
#[derive(Debug, Clone)]
pub enum Rule {
    Contains(Vec<Regex>),
    Exact(Vec<String>),
    Regex(Regex),
}

/// One question and its rule.
#[derive(Debug, Clone)]
pub struct Question {
    pub question: String,
    pub rule: Rule,
    /// Its line in the file, for reports.
    pub line: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuestion {
    question: String,
    #[serde(default)]
    contains: Option<Vec<String>>,
    #[serde(default)]
    exact: Option<Vec<String>>,
    #[serde(default)]
    regex: Option<String>,
}

impl Rule {
    /// Whether `answer` is accepted.
    pub fn accepts(&self, answer: &str) -> bool {
        match self {
            Rule::Contains(words) => words.iter().any(|w| w.is_match(answer)),
            Rule::Exact(options) => {
                let a = normalise(answer);
                options.contains(&a)
            }
            Rule::Regex(re) => re.is_match(answer),
        }
    }
}

/// Lower case, trimmed, without a final full stop.
fn normalise(s: &str) -> String {
    let s = s.trim().to_lowercase();
    s.strip_suffix('.').unwrap_or(&s).trim().to_string()
}

/// `word` as a whole word or phrase, ignoring case, plural allowed.
fn whole_word(word: &str) -> Result<Regex, String> {
    let w = word.trim();
    if w.is_empty() {
        return Err("contains has an empty answer".into());
    }
    let word_char = |c: char| c.is_alphanumeric() || c == '_';
    let start = if w.starts_with(word_char) { r"\b" } else { "" };
    let end = if w.ends_with(word_char) {
        r"(?:e?s)?\b"
    } else {
        ""
    };
    Regex::new(&format!("(?i){start}{}{end}", regex::escape(w))).map_err(|e| e.to_string())
}

impl RawQuestion {
    fn into_question(self, line: usize) -> Result<Question, String> {
        if self.question.trim().is_empty() {
            return Err("question is empty".into());
        }
        let rule = match (self.contains, self.exact, self.regex) {
            (Some(words), None, None) if !words.is_empty() => Rule::Contains(
                words
                    .iter()
                    .map(|w| whole_word(w))
                    .collect::<Result<_, _>>()?,
            ),
            (None, Some(options), None) if !options.is_empty() => {
                Rule::Exact(options.iter().map(|o| normalise(o)).collect())
            }
            (None, None, Some(re)) => Rule::Regex(
                Regex::new(&re).map_err(|e| format!("regex {re:?} does not compile: {e}"))?,
            ),
            (None, None, None) => {
                return Err("no accepted answer: give one of contains, exact, regex".into())
            }
            (Some(w), None, None) if w.is_empty() => return Err("contains is empty".into()),
            (None, Some(_), None) => return Err("exact is empty".into()),
            _ => return Err("give only one of contains, exact, regex".into()),
        };
        Ok(Question {
            question: self.question,
            rule,
            line,
        })
    }
}

/// Reads a calibration set; blank lines and lines starting with `#` are
/// skipped.
///
/// # Errors
///
/// [`SetError`] naming the file and line of the first bad line, or a file
/// with no questions.
pub fn load(path: &Path) -> Result<Vec<Question>, SetError> {
    let text = std::fs::read_to_string(path).map_err(|source| SetError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let questions = parse(&text).map_err(|(line, reason)| SetError::Line {
        path: path.to_path_buf(),
        line,
        reason,
    })?;
    if questions.is_empty() {
        return Err(SetError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(questions)
}

/// Parses a set's text; the error carries the 1-based line.
fn parse(text: &str) -> Result<Vec<Question>, (usize, String)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let q: RawQuestion = serde_json::from_str(t).map_err(|e| (line, e.to_string()))?;
        out.push(q.into_question(line).map_err(|e| (line, e))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Question {
        parse(line).unwrap().remove(0)
    }

    #[test]
    fn contains_matches_whole_words_ignoring_case_and_plurals() {
        let q = one(r#"{"question": "q", "contains": ["Paris", "chickpea"]}"#);
        assert!(q.rule.accepts("The capital is paris."));
        assert!(q.rule.accepts("It is made from chickpeas"));
        assert!(!q.rule.accepts("Parisian food"));
        let short = one(r#"{"question": "q", "contains": ["C"]}"#);
        assert!(short.rule.accepts("It is written in C."));
        assert!(!short.rule.accepts("Because of cache"));
        let symbol = one(r#"{"question": "q", "contains": ["==="]}"#);
        assert!(symbol.rule.accepts("use a===b"));
    }

    #[test]
    fn exact_and_regex_rules() {
        let e = one(r#"{"question": "q", "exact": ["Yes"]}"#);
        assert!(e.rule.accepts(" yes. "));
        assert!(!e.rule.accepts("yes, it is"));
        let r = one(r#"{"question": "q", "regex": "\\b56\\b"}"#);
        assert!(r.rule.accepts("7 x 8 = 56"));
        assert!(!r.rule.accepts("560"));
    }

    #[test]
    fn bad_lines_name_their_line_and_reason() {
        let text = "# comment\n{\"question\": \"ok\", \"contains\": [\"a\"]}\n\n{not json}\n";
        assert_eq!(parse(text).unwrap_err().0, 4);
        for (line, want) in [
            (r#"{"question": "q"}"#, "no accepted answer"),
            (
                r#"{"question": " ", "contains": ["a"]}"#,
                "question is empty",
            ),
            (r#"{"question": "q", "contains": []}"#, "contains is empty"),
            (
                r#"{"question": "q", "contains": ["a"], "exact": ["a"]}"#,
                "only one",
            ),
            (r#"{"question": "q", "regex": "("}"#, "does not compile"),
            (r#"{"question": "q", "answer": "a"}"#, "unknown field"),
        ] {
            let (n, reason) = parse(line).unwrap_err();
            assert_eq!(n, 1);
            assert!(reason.contains(want), "{line}: {reason}");
        }
    }

    #[test]
    fn a_file_with_no_questions_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.jsonl");
        std::fs::write(&p, "# nothing\n\n").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains("empty.jsonl") && e.contains("no questions"),
            "{e}"
        );
        let missing = load(&dir.path().join("none.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("none.jsonl"), "{missing}");
    }

    #[test]
    fn the_shipped_sets_load() {
        for split in ["train", "dev"] {
            let p = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("data/calibration")
                .join(format!("{split}.jsonl"));
            let qs = load(&p).unwrap();
            assert!(qs.len() >= 80, "{split}: {}", qs.len());
        }
    }
}
