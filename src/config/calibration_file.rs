//! The calibration file a config may name (`calibration:`): each listed
//! tier's fitted threshold and calibration, written by `calibrate --write`
//! so tiers.yaml itself, comments and all, is never rewritten.
//!
//! ```yaml
//! tiers:
//!   router:
//!     threshold: 0.62
//!     calibration: { bias: -1.2, min_prob: 0.8, ... }
//! ```

use super::raw::RawConfig;
use super::ConfigError;
use crate::confidence::Calibration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One tier's fitted values.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fitted {
    pub threshold: f64,
    pub calibration: Calibration,
}

/// The calibration file's contents.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CalibrationFile {
    /// Fitted values by tier name.
    pub tiers: BTreeMap<String, Fitted>,
}

/// Where `config`'s calibration file named `name` lives.
pub fn resolve(config: &Path, name: &str) -> PathBuf {
    let p = PathBuf::from(name);
    if p.is_absolute() {
        p
    } else {
        config.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// Reads a calibration file.
///
/// # Errors
///
/// [`ConfigError::Read`] or [`ConfigError::Parse`] naming the file.
pub fn read(path: &Path) -> Result<CalibrationFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
        path: path.to_path_buf(),
        reason,
    })?;
    yaml_serde::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Sets the threshold and calibration of each tier the config's calibration
/// file lists (nothing without one).
///
/// # Errors
///
/// The file cannot be read or parsed, or it names a tier the config lacks.
pub fn apply(raw: &mut RawConfig, config: &Path) -> Result<(), ConfigError> {
    let Some(name) = raw.calibration.as_deref() else {
        return Ok(());
    };
    let path = resolve(config, name);
    let file = read(&path)?;
    for (tier, fitted) in file.tiers {
        let Some(t) = raw.tiers.iter_mut().find(|t| t.name == tier) else {
            return Err(ConfigError::Parse {
                path,
                message: format!("tiers.{tier}: no tier of that name in {}", config.display()),
            });
        };
        t.threshold = fitted.threshold;
        t.calibration = Some(fitted.calibration);
    }
    Ok(())
}
