//! Stop strings: finds where generated text hits one, even when the stop
//! string spans several tokens.

/// A set of stop strings, checked as bytes against the generated text.
#[derive(Debug, Clone, Default)]
pub struct StopSet {
    stops: Vec<Vec<u8>>,
    longest: usize,
}

impl StopSet {
    pub fn new(stops: &[String]) -> Self {
        let stops: Vec<Vec<u8>> = stops
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let longest = stops.iter().map(Vec::len).max().unwrap_or(0);
        StopSet { stops, longest }
    }

    /// After `text` grew from `old_len` bytes, returns the byte offset where
    /// the earliest stop string that ends in the new part begins.
    pub fn find(&self, text: &[u8], old_len: usize) -> Option<usize> {
        if self.stops.is_empty() {
            return None;
        }
        let from = old_len.saturating_sub(self.longest.saturating_sub(1));
        let window = &text[from..];
        self.stops
            .iter()
            .filter_map(|s| window.windows(s.len()).position(|w| w == s.as_slice()))
            .min()
            .map(|p| from + p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_stop_that_spans_two_pieces() {
        let set = StopSet::new(&["\nUser:".to_string()]);
        let mut text = b"Hello there.\nUs".to_vec();
        assert_eq!(set.find(&text, 0), None);
        let old = text.len();
        text.extend_from_slice(b"er: next");
        assert_eq!(set.find(&text, old), Some(12));
    }

    #[test]
    fn empty_set_never_stops() {
        assert_eq!(StopSet::new(&[String::new()]).find(b"anything", 0), None);
    }
}
