//! What the model's state after the prompt says about the answer to come:
//! a linear probe on the final norm's output at the prompt's last token
//! (read by the engine at no cost, see `engine::ggml_hook::state`).
//!
//! A model's state before it answers already tells questions it knows from
//! those it does not (a small model "knows" capitals, not integrals); the
//! tokens' probabilities say how the answer went, not whether the model
//! had it. The probe is fitted with the rest of the calibration: the
//! states of the calibration set's prompts are reduced to their
//! [`STATE_AXES`] principal axes (a few hundred questions cannot fit one
//! weight per state entry), the logistic model weighs those axes like any
//! other feature, and the weights fold back into one vector over the
//! state, [`StateProbe`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Principal axes of the states the calibration weighs.
pub const STATE_AXES: usize = 8;
/// Fewest answers a probe is fitted on: below that, the axes are noise.
pub const MIN_STATE_ANSWERS: usize = 40;
/// Most states the axes are computed from (spread evenly over the set):
/// the eigen-solver's cost grows with the cube of this.
const MAX_STATES_FOR_AXES: usize = 800;

/// A tier's linear read of its model's state after the prompt, added to
/// the calibration's log-odds: `weights . state - center`. Written by
/// `calibrate` for a model whose state the engine reads; an answer without
/// a state of this width (another model, a remote worker that sent none)
/// reads 0, the average prompt's read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateProbe {
    /// One weight per entry of the state (the model's embedding width).
    pub weights: Vec<f32>,
    /// The read of the calibration set's mean state, subtracted so the
    /// average prompt reads 0.
    pub center: f64,
}

impl StateProbe {
    /// The probe's contribution to the log-odds for `state`: 0 without
    /// one, or with one of another width.
    pub fn read(&self, state: Option<&[f32]>) -> f64 {
        match state {
            Some(s) if s.len() == self.weights.len() => {
                let dot: f64 = s
                    .iter()
                    .zip(&self.weights)
                    .map(|(&x, &w)| x as f64 * w as f64)
                    .sum();
                dot - self.center
            }
            _ => 0.0,
        }
    }

    /// Whether every number is finite.
    pub fn is_finite(&self) -> bool {
        self.center.is_finite() && self.weights.iter().all(|w| w.is_finite())
    }
}

/// The principal axes of a set of states, each scaled so the states'
/// projections on it have unit spread.
#[derive(Debug, Clone)]
pub struct Axes {
    mean: Vec<f64>,
    /// `STATE_AXES` (or fewer) directions over the state, divided by the
    /// spread along them.
    scaled: Vec<Vec<f64>>,
}

impl Axes {
    /// The axes of `states` (all of one width, at least
    /// [`MIN_STATE_ANSWERS`]), or None where they cannot be had.
    pub fn of(states: &[&[f32]]) -> Option<Axes> {
        let width = states.first()?.len();
        if states.len() < MIN_STATE_ANSWERS || width == 0 || states.iter().any(|s| s.len() != width)
        {
            return None;
        }
        let step = states.len().div_ceil(MAX_STATES_FOR_AXES);
        let used: Vec<&[f32]> = states.iter().step_by(step).copied().collect();
        let n = used.len();
        let mut mean = vec![0.0f64; width];
        for s in &used {
            for (m, &x) in mean.iter_mut().zip(*s) {
                *m += x as f64 / n as f64;
            }
        }
        let centred: Vec<Vec<f64>> = used
            .iter()
            .map(|s| s.iter().zip(&mean).map(|(&x, m)| x as f64 - m).collect())
            .collect();
        // The Gram matrix X X^T shares its eigenvalues with the covariance
        // X^T X and is n x n, however wide the state.
        let gram: Vec<Vec<f64>> = centred
            .iter()
            .map(|a| centred.iter().map(|b| dot(a, b)).collect())
            .collect();
        let (values, vectors) = symmetric_eigen(gram);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
        let largest = values[order[0]];
        let mut scaled = Vec::new();
        for &i in order.iter().take(STATE_AXES) {
            let lambda = values[i];
            if !(lambda > largest * 1e-9 && lambda > 0.0) {
                break;
            }
            // Axis v = X^T u / sqrt(lambda) (unit length); the projections
            // X v have spread sqrt(lambda / n): v / spread = X^T u * sqrt(n) / lambda.
            let f = (n as f64).sqrt() / lambda;
            let mut axis = vec![0.0; width];
            for (row, x) in centred.iter().enumerate() {
                let u = vectors[row][i] * f;
                for (a, v) in axis.iter_mut().zip(x) {
                    *a += u * v;
                }
            }
            scaled.push(axis);
        }
        (!scaled.is_empty()).then_some(Axes { mean, scaled })
    }

    /// How many axes there are.
    pub fn len(&self) -> usize {
        self.scaled.len()
    }

    /// Whether there are none (never, for axes [`Axes::of`] returned).
    pub fn is_empty(&self) -> bool {
        self.scaled.is_empty()
    }

    /// `state`'s coordinates on the axes.
    pub fn project(&self, state: &[f32]) -> Vec<f64> {
        let centred: Vec<f64> = state
            .iter()
            .zip(&self.mean)
            .map(|(&x, m)| x as f64 - m)
            .collect();
        self.scaled.iter().map(|a| dot(a, &centred)).collect()
    }

    /// The probe whose read of a state equals `weights` (one per axis)
    /// applied to its coordinates.
    pub fn fold(&self, weights: &[f64]) -> StateProbe {
        let mut w = vec![0.0f64; self.mean.len()];
        for (axis, &k) in self.scaled.iter().zip(weights) {
            for (o, a) in w.iter_mut().zip(axis) {
                *o += k * a;
            }
        }
        StateProbe {
            center: dot(&w, &self.mean),
            weights: w.iter().map(|&x| x as f32).collect(),
        }
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Eigenvalues and eigenvectors (as the columns of the second result) of a
/// symmetric matrix, by cyclic Jacobi rotations.
fn symmetric_eigen(mut a: Vec<Vec<f64>>) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = a.len();
    let mut v: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    let total: f64 = a.iter().flatten().map(|x| x * x).sum();
    for _sweep in 0..60 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        if off <= total * 1e-24 || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p][q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for row in a.iter_mut() {
                    let (kp, kq) = (row[p], row[q]);
                    row[p] = c * kp - s * kq;
                    row[q] = s * kp + c * kq;
                }
                let (low, high) = a.split_at_mut(q);
                for (x, y) in low[p].iter_mut().zip(high[0].iter_mut()) {
                    let (pk, qk) = (*x, *y);
                    *x = c * pk - s * qk;
                    *y = s * pk + c * qk;
                }
                for row in v.iter_mut() {
                    let (kp, kq) = (row[p], row[q]);
                    row[p] = c * kp - s * kq;
                    row[q] = s * kp + c * kq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i][i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_finds_the_eigenpairs_of_a_symmetric_matrix() {
        let m = vec![
            vec![4.0, 1.0, 0.5],
            vec![1.0, 3.0, 0.2],
            vec![0.5, 0.2, 1.0],
        ];
        let (values, v) = symmetric_eigen(m.clone());
        for i in 0..3 {
            // M v_i = lambda_i v_i.
            for r in 0..3 {
                let mv: f64 = (0..3).map(|k| m[r][k] * v[k][i]).sum();
                assert!((mv - values[i] * v[r][i]).abs() < 1e-10, "{values:?}");
            }
        }
        let trace: f64 = values.iter().sum();
        assert!((trace - 8.0).abs() < 1e-10);
    }

    /// States that vary mostly along one direction, a little along a
    /// second, in a space of 6.
    fn states() -> Vec<Vec<f32>> {
        (0..60)
            .map(|i| {
                let a = ((i * 37 % 61) as f32 / 61.0 - 0.5) * 10.0;
                let b = ((i * 17 % 53) as f32 / 53.0 - 0.5) * 2.0;
                vec![1.0 + a, a, 2.0 + b, -b, 0.5, 0.0]
            })
            .collect()
    }

    #[test]
    fn axes_give_unit_spread_coordinates_largest_first() {
        let s = states();
        let refs: Vec<&[f32]> = s.iter().map(Vec::as_slice).collect();
        let axes = Axes::of(&refs).unwrap();
        assert_eq!(axes.len(), 2, "two directions vary");
        let coords: Vec<Vec<f64>> = refs.iter().map(|x| axes.project(x)).collect();
        for j in 0..2 {
            let mean = coords.iter().map(|c| c[j]).sum::<f64>() / 60.0;
            let var = coords.iter().map(|c| (c[j] - mean).powi(2)).sum::<f64>() / 60.0;
            assert!(
                mean.abs() < 1e-9 && (var - 1.0).abs() < 1e-9,
                "{j}: {mean} {var}"
            );
        }
        // The first axis follows the wide direction (entries 0 and 1).
        let wide: Vec<f64> = refs.iter().map(|x| x[1] as f64).collect();
        let mean = wide.iter().sum::<f64>() / 60.0;
        let sd = (wide.iter().map(|w| (w - mean).powi(2)).sum::<f64>() / 60.0).sqrt();
        let corr = coords
            .iter()
            .zip(&wide)
            .map(|(c, w)| c[0] * (w - mean) / sd)
            .sum::<f64>()
            / 60.0;
        assert!(corr.abs() > 0.99, "{corr}");
    }

    #[test]
    fn a_folded_probe_reads_what_the_weighted_axes_read() {
        let s = states();
        let refs: Vec<&[f32]> = s.iter().map(Vec::as_slice).collect();
        let axes = Axes::of(&refs).unwrap();
        let probe = axes.fold(&[0.7, -1.3]);
        for x in &refs {
            let c = axes.project(x);
            let want = 0.7 * c[0] - 1.3 * c[1];
            assert!((probe.read(Some(x)) - want).abs() < 1e-4, "{want}");
        }
        assert_eq!(probe.read(None), 0.0);
        assert_eq!(probe.read(Some(&[1.0, 2.0])), 0.0, "another width");
    }

    #[test]
    fn too_few_or_ragged_states_have_no_axes() {
        let s = states();
        let refs: Vec<&[f32]> = s.iter().map(Vec::as_slice).collect();
        assert!(Axes::of(&refs[..MIN_STATE_ANSWERS - 1]).is_none());
        let mut ragged = refs.clone();
        ragged[3] = &[1.0, 2.0];
        assert!(Axes::of(&ragged).is_none());
        assert!(Axes::of(&[]).is_none());
    }
}
