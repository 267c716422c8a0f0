//! Saving a ladder's fitted values: the calibration file the config names
//! (named and created if it names none), each file written whole to a
//! temporary file beside it and renamed over the old one, so a crash or a
//! full disk never leaves a half-written file.

use super::LadderFit;
use crate::config::calibration_file::{self, CalibrationFile, Fitted};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What [`save`] wrote.
#[derive(Debug, Clone)]
pub struct Saved {
    pub calibration_file: PathBuf,
    /// Tiers whose values were written.
    pub tiers: Vec<String>,
    /// Whether the config gained a `calibration:` line naming the file.
    pub config_updated: bool,
}

/// The calibration file's name when the config names none: beside it,
/// `<stem>.calibration.yaml`.
fn default_name(config: &Path) -> String {
    let stem = config
        .file_stem()
        .map_or_else(|| "tiers".into(), |s| s.to_string_lossy().into_owned());
    format!("{stem}.calibration.yaml")
}

/// Writes the fitted tiers of `fit` into the calibration file of the
/// config at `config` (`named`: its `calibration:` value, if any), keeping
/// the entries of tiers not refitted, and names the file in the config
/// when it did not.
///
/// # Errors
///
/// Reading the old calibration file or writing either file failed; the
/// old files are then as they were.
pub fn save(config: &Path, named: Option<&str>, fit: &LadderFit) -> anyhow::Result<Saved> {
    let name = named.map_or_else(|| default_name(config), str::to_string);
    let path = calibration_file::resolve(config, &name);
    let mut file = if path.exists() {
        calibration_file::read(&path)?
    } else {
        CalibrationFile::default()
    };
    let mut tiers = Vec::new();
    for t in &fit.tiers {
        if let (Some(calibration), Some(threshold)) = (t.calibration.clone(), t.threshold) {
            file.tiers.insert(
                t.name.clone(),
                Fitted {
                    threshold,
                    calibration,
                },
            );
            tiers.push(t.name.clone());
        }
    }
    let header = format!(
        "# Written by `xnai-model-router calibrate --write` from {} questions at precision {:.3}.\n\
         # Each tier's threshold and the logistic model from its answers' features\n\
         # to the probability that an answer is right. Re-run calibrate to refit.\n",
        fit.questions, fit.precision
    );
    let body = yaml_serde::to_string(&file)?;
    replace(&path, &format!("{header}{body}"))?;
    let config_updated = named.is_none();
    if config_updated {
        let mut text = std::fs::read_to_string(config)?;
        if !text.ends_with('\n') && !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&format!(
            "\n# Fitted thresholds and calibrations (xnai-model-router calibrate --write).\ncalibration: {name}\n"
        ));
        replace(config, &text)?;
    }
    Ok(Saved {
        calibration_file: path,
        tiers,
        config_updated,
    })
}

/// Replaces `path` with `text` atomically: a temporary file in the same
/// folder, flushed to disk, then renamed over it.
pub fn replace(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let mut tmp = tempfile::NamedTempFile::new_in(dir.unwrap_or(Path::new(".")))?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    if let Ok(meta) = std::fs::metadata(path) {
        // Keep the old file's permissions.
        std::fs::set_permissions(tmp.path(), meta.permissions())?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibrate::TierFit;
    use crate::confidence::Calibration;

    fn fit(tiers: &[(&str, Option<f64>)]) -> LadderFit {
        LadderFit {
            questions: 10,
            precision: 0.7,
            tiers: tiers
                .iter()
                .map(|(name, th)| TierFit {
                    name: name.to_string(),
                    answered: 10,
                    accuracy: 0.5,
                    auroc_before: None,
                    auroc_after: None,
                    auroc_cv: None,
                    calibration: th.map(|_| {
                        Calibration::from_weights(
                            -1.0,
                            [0.5; crate::confidence::features::N_FEATURES],
                        )
                    }),
                    threshold: *th,
                    share: 0.0,
                    warnings: Vec::new(),
                })
                .collect(),
            cascade_accuracy: 0.5,
            below_top: 0.5,
        }
    }

    #[test]
    fn writes_the_file_names_it_in_the_config_and_keeps_comments() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tiers.yaml");
        std::fs::write(&config, "# my comment\ntiers: []").unwrap();
        let saved = save(&config, None, &fit(&[("a", Some(0.6)), ("b", None)])).unwrap();
        assert_eq!(saved.tiers, vec!["a".to_string()]);
        assert!(saved.config_updated);
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(text.starts_with("# my comment\ntiers: []\n"), "{text}");
        assert!(
            text.ends_with("calibration: tiers.calibration.yaml\n"),
            "{text}"
        );
        let file = calibration_file::read(&saved.calibration_file).unwrap();
        assert_eq!(file.tiers["a"].threshold, 0.6);
        assert!(!file.tiers.contains_key("b"));
        // A second run refits a tier, keeps the others, and leaves the
        // config alone.
        std::fs::write(&config, "tiers: []\ncalibration: tiers.calibration.yaml\n").unwrap();
        let again = save(
            &config,
            Some("tiers.calibration.yaml"),
            &fit(&[("b", Some(0.3))]),
        )
        .unwrap();
        assert!(!again.config_updated);
        let file = calibration_file::read(&again.calibration_file).unwrap();
        assert_eq!(file.tiers["a"].threshold, 0.6);
        assert_eq!(file.tiers["b"].threshold, 0.3);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 2, "no temporary files left behind");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tiers.yaml");
        std::fs::write(&config, "tiers: []\n").unwrap();
        // The calibration file's folder does not exist: nothing is written.
        let err = save(&config, Some("missing/cal.yaml"), &fit(&[("a", Some(0.5))]));
        assert!(err.is_err());
        assert_eq!(std::fs::read_to_string(&config).unwrap(), "tiers: []\n");
    }
}
