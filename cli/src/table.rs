//! Aligned text tables, the way Cilium's tabwriter prints them: every column
//! as wide as its widest cell plus a fixed gap, the last column unpadded.

/// Cilium's `tabwriter.NewWriter(w, 5, 0, 3, ' ', 0)`: at least 5 wide, 3 apart.
const MIN_WIDTH: usize = 5;
const PADDING: usize = 3;

/// Renders `header` and `rows` with column widths computed from the content.
/// Rows may be shorter than the header (missing cells are empty). Every line
/// ends with `\n` and carries no trailing spaces.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut all = Vec::with_capacity(rows.len() + 1);
    all.push(header.iter().map(|s| s.to_string()).collect());
    all.extend_from_slice(rows);
    render_rows(&all)
}

/// Like [`render`], without a header line.
pub fn render_rows(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max((cell.chars().count() + PADDING).max(MIN_WIDTH));
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                line.extend(std::iter::repeat_n(' ', widths[i] - cell.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn widths_follow_the_widest_cell() {
        let out = render(&["ID", "Name"], &[row(&["1", "a"]), row(&["100000", "b"])]);
        assert_eq!(out, "ID       Name\n1        a\n100000   b\n");
    }

    #[test]
    fn short_columns_get_the_minimum_width_and_empty_cells_align() {
        let out = render(&["A", "B", "C"], &[row(&["", "", "x"])]);
        assert_eq!(out, "A    B    C\n          x\n");
    }

    #[test]
    fn header_alone_when_there_are_no_rows() {
        assert_eq!(render(&["ID", "Frontend"], &[]), "ID   Frontend\n");
    }
}
