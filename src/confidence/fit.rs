//! Fitting a calibration, and judging one: logistic regression by Newton's
//! method, AUROC, and the threshold that keeps a precision.

use super::calibration::Calibration;
use super::features::{Features, N_FEATURES};
use super::state::Axes;

/// L2 penalty on the standardised weights: keeps a fit on a few hundred
/// answers, or on features that barely vary, from running off. Chosen by
/// 10-fold cross-validation on the training split of `data/calibration/`
/// (AUROC flat from 10 to 30, lower at 1 and below, for every tier of the
/// default ladder).
pub const L2: f64 = 10.0;
/// Newton steps at most; a fit converges in well under ten.
const MAX_STEPS: usize = 50;

/// Fits a tier's calibration to its answers' features, labelled right
/// (`true`) or wrong; None without both kinds of label. Where every answer
/// carries a model state of one width and there are enough of them, the
/// states' principal axes are weighed too and folded into the
/// calibration's state probe (see `confidence::state`).
pub fn fit_answers(features: &[Features], ys: &[bool]) -> Option<Calibration> {
    let states: Option<Vec<&[f32]>> = features.iter().map(|f| f.state.as_deref()).collect();
    let axes = states.as_deref().and_then(Axes::of);
    let rows: Vec<Vec<f64>> = features
        .iter()
        .map(|f| {
            let mut row = f.vector().to_vec();
            if let (Some(axes), Some(state)) = (&axes, &f.state) {
                row.extend(axes.project(state));
            }
            row
        })
        .collect();
    let (bias, w) = fit_rows(&rows, ys)?;
    let mut c = Calibration::from_weights(bias, w[..N_FEATURES].try_into().ok()?);
    c.state = axes.map(|a| a.fold(&w[N_FEATURES..]));
    c.is_finite().then_some(c)
}

/// Fits a logistic calibration to feature vectors `xs` labelled right
/// (`true`) or wrong; None without both kinds of label. (Calibrate fits
/// answers, [`fit_answers`]; the tests fit raw vectors.)
#[cfg(test)]
fn fit(xs: &[[f64; N_FEATURES]], ys: &[bool]) -> Option<Calibration> {
    let rows: Vec<Vec<f64>> = xs.iter().map(|x| x.to_vec()).collect();
    let (bias, w) = fit_rows(&rows, ys)?;
    let c = Calibration::from_weights(bias, w.try_into().ok()?);
    c.is_finite().then_some(c)
}

/// Logistic regression of `ys` on `rows` (all of one width): the bias and
/// one weight per column, on the raw columns.
///
/// Columns are standardised before fitting, so the penalty weighs them
/// alike, and the weights are mapped back to raw columns after.
fn fit_rows(rows: &[Vec<f64>], ys: &[bool]) -> Option<(f64, Vec<f64>)> {
    assert_eq!(rows.len(), ys.len(), "one label per feature vector");
    let positives = ys.iter().filter(|&&y| y).count();
    if positives == 0 || positives == ys.len() {
        return None;
    }
    let width = rows[0].len();
    let (mean, scale) = standardisation(rows, width);
    let rows: Vec<Vec<f64>> = rows
        .iter()
        .map(|x| {
            std::iter::once(1.0)
                .chain((0..width).map(|j| (x[j] - mean[j]) / scale[j]))
                .collect()
        })
        .collect();
    let mut beta = vec![0.0; width + 1];
    // Start at the base rate.
    let rate = positives as f64 / ys.len() as f64;
    beta[0] = (rate / (1.0 - rate)).ln();
    for _ in 0..MAX_STEPS {
        let step = newton_step(&rows, ys, &beta)?;
        let mut moved: f64 = 0.0;
        for (b, s) in beta.iter_mut().zip(step) {
            *b -= s;
            moved = moved.max(s.abs());
        }
        if moved < 1e-9 {
            break;
        }
    }
    // Back to raw columns: w_j = beta_j / scale_j, bias absorbs the means.
    let mut bias = beta[0];
    let w: Vec<f64> = (0..width)
        .map(|j| {
            let w = beta[j + 1] / scale[j];
            bias -= w * mean[j];
            w
        })
        .collect();
    Some((bias, w))
}

/// Each column's mean and spread (1 where it does not vary).
fn standardisation(xs: &[Vec<f64>], width: usize) -> (Vec<f64>, Vec<f64>) {
    let n = xs.len().max(1) as f64;
    let mut mean = vec![0.0; width];
    let mut scale = vec![0.0; width];
    for x in xs {
        for j in 0..width {
            mean[j] += x[j] / n;
        }
    }
    for x in xs {
        for j in 0..width {
            scale[j] += (x[j] - mean[j]).powi(2) / n;
        }
    }
    for s in &mut scale {
        *s = if *s > 1e-12 { s.sqrt() } else { 1.0 };
    }
    (mean, scale)
}

/// The Newton step H^-1 g of the penalised negative log-likelihood at
/// `beta` (the intercept unpenalised); None if H is singular.
fn newton_step(rows: &[Vec<f64>], ys: &[bool], beta: &[f64]) -> Option<Vec<f64>> {
    let d = beta.len();
    let mut g = vec![0.0; d];
    let mut h = vec![vec![0.0; d]; d];
    for (r, &y) in rows.iter().zip(ys) {
        let z: f64 = r.iter().zip(beta).map(|(a, b)| a * b).sum();
        let p = super::calibration::sigmoid(z);
        let err = p - if y { 1.0 } else { 0.0 };
        let w = (p * (1.0 - p)).max(1e-12);
        for i in 0..d {
            g[i] += err * r[i];
            for j in 0..d {
                h[i][j] += w * r[i] * r[j];
            }
        }
    }
    for i in 1..d {
        g[i] += L2 * beta[i];
        h[i][i] += L2;
    }
    solve(h, g)
}

/// Solves `a x = b` by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let d = b.len();
    for col in 0..d {
        let pivot = (col..d).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..d {
            let f = a[row][col] / a[col][col];
            let (upper, lower) = a.split_at_mut(row);
            for (x, p) in lower[0][col..].iter_mut().zip(&upper[col][col..]) {
                *x -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; d];
    for row in (0..d).rev() {
        let s: f64 = (row + 1..d).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    Some(x)
}

/// Area under the ROC curve of `scores` for telling right (`true`) from
/// wrong answers: the chance a random right answer outscores a random wrong
/// one, ties counting half. None without both kinds.
pub fn auroc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let mut pairs: Vec<(f64, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let pos = pairs.iter().filter(|p| p.1).count() as f64;
    let neg = pairs.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    // Mann-Whitney U over average ranks.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            j += 1;
        }
        let avg_rank = (i + j + 1) as f64 / 2.0;
        rank_sum += avg_rank * pairs[i..j].iter().filter(|p| p.1).count() as f64;
        i = j;
    }
    Some((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

/// The lowest threshold at which the answers scoring at or above it are
/// right at least `precision` of the time (most answers kept at that
/// precision); None when no threshold reaches it.
pub fn threshold_for_precision(scores: &[f64], labels: &[bool], precision: f64) -> Option<f64> {
    let mut pairs: Vec<(f64, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut right, mut best) = (0usize, None);
    let mut i = 0;
    while i < pairs.len() {
        // Answers tied on a score are accepted or refused together.
        let mut j = i;
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            right += pairs[j].1 as usize;
            j += 1;
        }
        if right as f64 >= precision * j as f64 {
            best = Some(pairs[i].0);
        }
        i = j;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic spread of feature vectors where the first feature
    /// decides rightness with some overlap.
    fn data() -> (Vec<[f64; N_FEATURES]>, Vec<bool>) {
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for i in 0..200 {
            let v = (i as f64 * 0.618_034).fract();
            let noise = ((i * 37 % 101) as f64 / 101.0 - 0.5) * 0.4;
            let mut x = [0.0; N_FEATURES];
            x[0] = v;
            x[3] = -3.0 * (1.0 - v) + noise;
            x[5] = (i % 7) as f64;
            xs.push(x);
            ys.push(v + noise > 0.5);
        }
        (xs, ys)
    }

    #[test]
    fn a_fit_separates_what_its_features_separate() {
        let (xs, ys) = data();
        let c = fit(&xs, &ys).expect("both labels present");
        let scores: Vec<f64> = xs.iter().map(|x| c.score(x)).collect();
        let a = auroc(&scores, &ys).unwrap();
        assert!(a > 0.9, "auroc {a}");
        assert!(c.min_prob > 0.0, "{c:?}");
    }

    #[test]
    fn one_kind_of_label_cannot_be_fitted() {
        let (xs, _) = data();
        assert!(fit(&xs, &vec![true; xs.len()]).is_none());
        assert!(fit(&[], &[]).is_none());
    }

    #[test]
    fn auroc_counts_pairs_and_ties() {
        assert_eq!(
            auroc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            Some(1.0)
        );
        assert_eq!(
            auroc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]),
            Some(0.0)
        );
        assert_eq!(auroc(&[0.5, 0.5], &[true, false]), Some(0.5));
        // One right answer above one of two wrong ones.
        assert_eq!(auroc(&[0.3, 0.1, 0.5], &[true, false, false]), Some(0.5));
        assert_eq!(auroc(&[0.3], &[true]), None);
    }

    #[test]
    fn the_threshold_keeps_the_asked_precision() {
        let scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4];
        let labels = [true, true, false, true, false, false];
        // Top 2: 100%; top 4: 75%; top 5: 60%.
        assert_eq!(threshold_for_precision(&scores, &labels, 1.0), Some(0.8));
        assert_eq!(threshold_for_precision(&scores, &labels, 0.75), Some(0.6));
        assert_eq!(threshold_for_precision(&scores, &labels, 0.5), Some(0.4));
        assert_eq!(threshold_for_precision(&[0.9], &[false], 0.5), None);
    }

    #[test]
    fn solve_inverts_a_small_system() {
        let x = solve(vec![vec![2.0, 1.0], vec![1.0, 3.0]], vec![3.0, 5.0]).unwrap();
        assert!((x[0] - 0.8).abs() < 1e-12 && (x[1] - 1.4).abs() < 1e-12);
        assert!(solve(vec![vec![1.0, 2.0], vec![2.0, 4.0]], vec![1.0, 2.0]).is_none());
    }
}
