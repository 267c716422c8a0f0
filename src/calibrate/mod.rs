//! Measuring a ladder on the user's own questions.
//!
//! [`set`] reads calibration sets (questions with accepted answers).
