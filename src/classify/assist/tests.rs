use super::*;
use crate::classify::{Domain, Level};
use std::sync::atomic::AtomicUsize;

/// Embeds a text as how many words of each domain's little vocabulary it
/// holds, plus a constant: enough for the dense model to separate them.
struct Words {
    calls: AtomicUsize,
    fail_on: Option<&'static str>,
}

const VOCAB: [&[&str]; 5] = [
    &["function", "compile", "bug"],
    &["sum", "divide", "equation"],
    &["poem", "story", "rhyme"],
    &["should", "tradeoff", "plan"],
    &["capital", "kettle", "weather"],
];

impl Words {
    /// A stand-in that fails on texts containing `fail_on`.
    fn new(fail_on: Option<&'static str>) -> Arc<Words> {
        Arc::new(Words {
            calls: AtomicUsize::new(0),
            fail_on,
        })
    }
}

impl Embed for Words {
    fn embed(&self, text: &str) -> Result<Vec<f32>, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_on.is_some_and(|w| text.contains(w)) {
            return Err("the model refused".into());
        }
        let lower = text.to_lowercase();
        let mut v: Vec<f32> = VOCAB
            .iter()
            .map(|ws| ws.iter().filter(|w| lower.contains(*w)).count() as f32)
            .collect();
        v.push(1.0);
        Ok(v)
    }

    fn identity(&self) -> String {
        "words v1".into()
    }
}

fn bank() -> Vec<Example> {
    let mut out = Vec::new();
    for (d, words) in Domain::ALL.into_iter().zip(VOCAB) {
        for (i, w) in words.iter().enumerate() {
            for j in 0..4 {
                out.push(Example {
                    query: format!("example {i} {j} about {w}"),
                    level: Level::Simple,
                    domain: d,
                });
            }
        }
    }
    out
}

fn start(embedder: Arc<Words>, dir: &std::path::Path) -> Arc<Assist> {
    let factory: EmbedderFactory = Box::new(move || Ok(embedder as Arc<dyn Embed>));
    Assist::start(factory, bank(), Some(dir.to_path_buf()))
}

/// A learned verdict of `domain` at probability `p` (the rest spread).
fn verdict(domain: Domain, p: f32) -> Complexity {
    let mut probs = [(1.0 - p) / 4.0; 5];
    probs[domain as usize] = p;
    Complexity {
        domain,
        domain_probs: Some(probs),
        ..Complexity::lexical_default(Method::Learned)
    }
}

#[test]
fn an_unsure_domain_is_settled_by_the_embedding_and_a_sure_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let words = Words::new(None);
    let assist = start(words.clone(), dir.path());
    assert!(assist.wait(Duration::from_secs(30)));
    assert_eq!(assist.status().state, "ready");

    let mut unsure = verdict(Domain::Code, 0.4);
    assist.refine("how do I divide this equation", &mut unsure);
    assert_eq!(unsure.domain, Domain::Math, "{unsure:?}");
    let a = unsure.assist.as_ref().unwrap();
    assert_eq!(
        (a.from, (a.probability * 100.0).round()),
        (Domain::Code, 40.0)
    );
    assert!(unsure.signals.iter().any(|s| s.name == "assist"));

    let mut sure = verdict(Domain::Code, 0.9);
    let before = sure.clone();
    assist.refine("how do I divide this equation", &mut sure);
    assert_eq!(sure, before, "a sure verdict is left alone");

    let mut lexical = verdict(Domain::Code, 0.4);
    lexical.method = Method::Lexical;
    assist.refine("how do I divide this equation", &mut lexical);
    assert_eq!(lexical.domain, Domain::Code, "only learned verdicts");

    let s = assist.status();
    assert_eq!((s.consulted, s.changed), (1, 1));
}

#[test]
fn the_bank_is_embedded_once_and_read_back_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let first = Words::new(None);
    assert!(start(first.clone(), dir.path()).wait(Duration::from_secs(30)));
    assert_eq!(first.calls.load(Ordering::SeqCst), bank().len());
    let again = Words::new(None);
    let assist = start(again.clone(), dir.path());
    assert!(assist.wait(Duration::from_secs(30)));
    assert_eq!(again.calls.load(Ordering::SeqCst), 0, "read from the cache");
    let mut c = verdict(Domain::General, 0.3);
    assist.refine("write a poem that will rhyme", &mut c);
    assert_eq!(c.domain, Domain::Creative);
}

#[test]
fn an_embedder_that_cannot_start_or_embed_leaves_it_off_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let factory: EmbedderFactory = Box::new(|| Err("model file missing".into()));
    let assist = Assist::start(factory, bank(), Some(dir.path().to_path_buf()));
    assert!(!assist.wait(Duration::from_secs(30)));
    let s = assist.status();
    assert_eq!(
        (s.state.as_str(), s.detail.as_str()),
        ("off", "model file missing")
    );

    let failing = Words::new(Some("kettle"));
    let assist = start(failing, dir.path());
    assert!(!assist.wait(Duration::from_secs(30)));
    assert!(
        assist.status().detail.contains("the model refused"),
        "{:?}",
        assist.status()
    );
    let mut c = verdict(Domain::Code, 0.3);
    let before = c.clone();
    assist.refine("divide", &mut c);
    assert_eq!(c, before);
    assert_eq!(
        Assist::off("configured off").status().detail,
        "configured off"
    );
}
