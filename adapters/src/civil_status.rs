//! A person's civil-status fields, for providers whose routes match on identity rather than on
//! an identifier: the broker derives them from a `pivot:` subject (docs/subjects.md) and an
//! adapter sends them as its registry declares (the http adapter's `{family_name}`, ...).

use std::fmt;

use time::Date;

/// The sex of the civil status, as the *identité pivot* records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sex {
    /// `M` in a `pivot:` subject (FranceConnect's `male`).
    Male,
    /// `F` in a `pivot:` subject (FranceConnect's `female`).
    Female,
}

impl Sex {
    /// `M` or `F`.
    pub fn code(self) -> &'static str {
        match self {
            Sex::Male => "M",
            Sex::Female => "F",
        }
    }
}

/// The civil-status fields of a `pivot:` subject, in their canonical form.
///
/// `Debug` prints nothing of them: they identify a person as surely as a subject id does.
#[derive(Clone, PartialEq, Eq)]
pub struct CivilStatus {
    /// Birth family name: uppercase ASCII letters, single spaces and hyphens (`DUPONT-DE L ILE`).
    pub family_name: String,
    /// Given names, in order (`["MARIE", "CLAIRE"]`); empty for a person who has none. A
    /// hyphenated name (`JEAN-PIERRE`) is one given name.
    pub given_names: Vec<String>,
    /// Date of birth.
    pub birth_date: Date,
    /// Sex.
    pub sex: Sex,
    /// INSEE code of the commune of birth (`69123`, `2A004`); empty for people born abroad.
    pub birth_place: String,
    /// INSEE code of the country of birth (`99100` for France).
    pub birth_country: String,
}

impl fmt::Debug for CivilStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CivilStatus(<redacted>)")
    }
}
