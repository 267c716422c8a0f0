//! An answer's confidence: the probability that it is right, from what its
//! tokens say about it.
//!
//! [`features`] reads an answer's token probabilities and next-token
//! entropies: the minimum and low percentiles of the token probabilities
//! (one made-up name or number is a low token in an otherwise fluent
//! answer), the mean log-probability, the mean entropy, the length, and
//! whether the model ended the answer itself. [`calibration`] is a tier's
//! logistic model from those features to the probability of a right
//! answer: the `confidence` reported and compared with the tier's
//! threshold. [`fit`] fits one on scored answers (`calibrate`) and judges
//! it (AUROC, the threshold that keeps a precision). [`state`] adds what
//! the model's state after the prompt says: a linear probe fitted with the
//! calibration, for models whose state the engine reads.

pub mod calibration;
pub mod features;
pub mod fit;
pub mod state;

pub use calibration::Calibration;
pub use features::Features;
pub use state::StateProbe;
