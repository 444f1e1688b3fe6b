//! Minimal disclosure: a habilitation may allow a consumer only a value derived from a claim —
//! a predicate (`quotient_familial <= 800` → true/false) or a bracket (`quotient_familial` →
//! `A`/`B`/`C` by thresholds). The consumer receives the signed derived value, never the raw
//! one; the rule travels in the signed payload and in the audit entry.

use serde::Deserialize;
use unefois_adapters::ClaimValue;

/// How a derived claim is computed from its source claim (an integer or a number).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    /// True when the source is at most this value.
    AtMost(f64),
    /// True when the source is at least this value.
    AtLeast(f64),
    /// The label of the first bound the source does not exceed, else the last label
    /// (`labels` has one more entry than `bounds`, which increase).
    Brackets {
        /// Upper bounds, increasing.
        bounds: Vec<f64>,
        /// One label per bracket.
        labels: Vec<String>,
    },
}

/// A claim a habilitation allows instead of its source.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DerivedClaim {
    /// The derived claim's name, as requested and returned.
    pub name: String,
    /// The source claim of the type.
    pub from: String,
    /// The rule.
    pub rule: Rule,
}

impl DerivedClaim {
    /// The rule in words, as signed and recorded: `quotient_familial <= 800`.
    pub fn describe(&self) -> String {
        match &self.rule {
            Rule::AtMost(n) => format!("{} <= {n}", self.from),
            Rule::AtLeast(n) => format!("{} >= {n}", self.from),
            Rule::Brackets { bounds, labels } => {
                let parts: Vec<String> = labels
                    .iter()
                    .enumerate()
                    .map(|(i, l)| match bounds.get(i) {
                        Some(b) => format!("{l} if <= {b}"),
                        None => format!("{l} otherwise"),
                    })
                    .collect();
                format!("{}: {}", self.from, parts.join(", "))
            }
        }
    }

    /// Why the rule is malformed, if it is.
    pub fn check(&self) -> Result<(), String> {
        match &self.rule {
            Rule::AtMost(n) | Rule::AtLeast(n) if !n.is_finite() => {
                Err("the bound must be finite".into())
            }
            Rule::Brackets { bounds, labels } => {
                if bounds.is_empty() || labels.len() != bounds.len() + 1 {
                    return Err("brackets need n bounds and n + 1 labels".into());
                }
                if bounds
                    .windows(2)
                    .any(|w| w[0].partial_cmp(&w[1]) != Some(std::cmp::Ordering::Less))
                    || bounds.iter().any(|b| !b.is_finite())
                {
                    return Err("bounds must be finite and increasing".into());
                }
                if labels.iter().any(|l| l.is_empty() || l.len() > 64) {
                    return Err("labels must be 1 to 64 bytes".into());
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The derived value from the source value (`None` if the source is not a number).
    pub fn apply(&self, source: &ClaimValue) -> Option<ClaimValue> {
        let x = match source {
            ClaimValue::Integer(i) => *i as f64,
            ClaimValue::Number(n) => *n,
            _ => return None,
        };
        Some(match &self.rule {
            Rule::AtMost(n) => ClaimValue::Boolean(x <= *n),
            Rule::AtLeast(n) => ClaimValue::Boolean(x >= *n),
            Rule::Brackets { bounds, labels } => {
                let i = bounds.iter().position(|b| x <= *b).unwrap_or(bounds.len());
                ClaimValue::String(labels.get(i).cloned().unwrap_or_default())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates_and_brackets() {
        let le = DerivedClaim {
            name: "qf_inf_800".into(),
            from: "quotient_familial".into(),
            rule: Rule::AtMost(800.0),
        };
        assert_eq!(
            le.apply(&ClaimValue::Integer(612)),
            Some(ClaimValue::Boolean(true))
        );
        assert_eq!(
            le.apply(&ClaimValue::Integer(801)),
            Some(ClaimValue::Boolean(false))
        );
        assert_eq!(le.describe(), "quotient_familial <= 800");
        let tranche = DerivedClaim {
            name: "tranche".into(),
            from: "quotient_familial".into(),
            rule: Rule::Brackets {
                bounds: vec![500.0, 800.0],
                labels: vec!["A".into(), "B".into(), "C".into()],
            },
        };
        assert_eq!(tranche.check(), Ok(()));
        assert_eq!(
            tranche.apply(&ClaimValue::Integer(389)),
            Some(ClaimValue::String("A".into()))
        );
        assert_eq!(
            tranche.apply(&ClaimValue::Integer(612)),
            Some(ClaimValue::String("B".into()))
        );
        assert_eq!(
            tranche.apply(&ClaimValue::Integer(1184)),
            Some(ClaimValue::String("C".into()))
        );
        assert_eq!(tranche.apply(&ClaimValue::String("x".into())), None);
        let bad = DerivedClaim {
            rule: Rule::Brackets {
                bounds: vec![800.0, 500.0],
                labels: vec!["A".into(), "B".into(), "C".into()],
            },
            ..tranche
        };
        assert!(bad.check().is_err());
    }
}
