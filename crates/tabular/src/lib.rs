//! Plain aligned text tables, as metroctl, the launcher and the benchmarks print them: a
//! header row, then one row per record, columns left-aligned and two spaces apart, no
//! trailing whitespace, no borders. Scripts and tests read this output, so its shape is fixed.
//!
//! Cells are sanitized ([`sanitize`]): text reported by nodes must not move the cursor or
//! break the alignment of a terminal.

/// Renders `header` and `rows` as an aligned table, one line each. A row shorter than the
/// header leaves its last columns empty; a row longer than it is cut to the header's width.
pub fn render<S: AsRef<str>>(header: &[&str], rows: &[Vec<S>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            row.iter()
                .take(header.len())
                .map(|cell| sanitize(cell.as_ref()))
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| sanitize(h)).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = width.saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Replaces control characters (escape sequences, newlines) with U+FFFD; tabs stay.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_two_spaces_apart_without_trailing_space() {
        let t = render(
            &["NAME", "STATE", "NOTE"],
            &[vec!["a", "UP", ""], vec!["longer-name", "NEW", "x"]],
        );
        assert_eq!(
            t,
            "NAME         STATE  NOTE\n\
             a            UP\n\
             longer-name  NEW    x\n"
        );
    }

    #[test]
    fn width_counts_characters_not_bytes() {
        let t = render(&["A", "B"], &[vec!["äöü".to_string(), "1".to_string()]]);
        assert_eq!(t, "A    B\näöü  1\n");
    }

    #[test]
    fn short_and_long_rows() {
        let t = render(&["A", "B"], &[vec!["x"], vec!["y", "z", "dropped"]]);
        assert_eq!(t, "A  B\nx\ny  z\n");
        assert_eq!(render::<&str>(&["ONLY"], &[]), "ONLY\n");
    }

    #[test]
    fn control_characters_cannot_escape_a_cell() {
        let t = render(&["A"], &[vec!["x\u{1b}[2Jy\nz\tw"]]);
        assert_eq!(t, "A\nx\u{FFFD}[2Jy\u{FFFD}z\tw\n");
    }
}
