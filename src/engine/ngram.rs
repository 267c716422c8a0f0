//! Prompt-lookup drafting: propose the tokens that followed the most recent
//! earlier occurrence of the text's last n tokens. Free to compute, and
//! right whenever the answer repeats the prompt: rewriting, summarising,
//! code editing, and refining a lower tier's draft.

/// Longest n-gram tried first; then shorter ones down to [`MIN_N`].
pub const MAX_N: usize = 4;
pub const MIN_N: usize = 2;

/// Up to `k` draft tokens continuing `history`, or none without a match.
pub fn draft(history: &[u32], k: usize) -> Vec<u32> {
    if k == 0 {
        return Vec::new();
    }
    for n in (MIN_N..=MAX_N).rev() {
        if history.len() <= n {
            continue;
        }
        let key = &history[history.len() - n..];
        // Most recent earlier occurrence whose continuation exists.
        let last_start = history.len() - n;
        if let Some(start) = (0..last_start).rev().find(|&s| &history[s..s + n] == key) {
            let from = start + n;
            let to = (from + k).min(history.len());
            if from < to {
                return history[from..to].to_vec();
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposes_what_followed_the_last_occurrence() {
        // "a b c d e ... a b c" -> propose "d e"
        let h = [1, 2, 3, 4, 5, 9, 9, 1, 2, 3];
        assert_eq!(draft(&h, 2), vec![4, 5]);
        assert_eq!(draft(&h, 10), vec![4, 5, 9, 9, 1, 2, 3]);
    }

    #[test]
    fn prefers_longer_matches_and_handles_no_match() {
        let h = [7, 3, 8, 1, 2, 3, 5, 1, 2, 3];
        // 3-gram [1,2,3] matches at 3 -> propose 5.
        assert_eq!(draft(&h, 1), vec![5]);
        assert!(draft(&[1, 2, 3, 4], 4).is_empty());
        assert!(draft(&[], 4).is_empty());
        assert!(draft(&[1, 1], 0).is_empty());
    }
}
