//! Multi-row statements: many rows to one `INSERT … VALUES (…),(…)`, so that
//! a batch of changes costs a few statements, not one each. Each statement
//! is a round trip to sqlx's SQLite thread (a wake-up on either side), and
//! binding named parameters on SQLite costs the square of their number.

use super::Backend;

/// `(?,?,…),(…)…` on SQLite, `($1,$2,…),(…)…` on PostgreSQL: `rows` rows of
/// `cols` placeholders, every parameter of the statement in order. SQLite
/// finds a named parameter (`$1`) by a linear search of the statement's
/// names when binding, so binding named ones costs the square of their
/// number; anonymous ones are bound by position.
pub(crate) fn values_list(backend: Backend, rows: usize, cols: usize) -> String {
    let mut q = String::with_capacity(rows * cols * 5);
    for i in 0..rows {
        if i > 0 {
            q.push(',');
        }
        q.push('(');
        for c in 0..cols {
            if c > 0 {
                q.push(',');
            }
            match backend {
                Backend::Sqlite => q.push('?'),
                Backend::Postgres => q.push_str(&format!("${}", i * cols + c + 1)),
            }
        }
        q.push(')');
    }
    q
}

/// Rows a multi-row statement takes at most: about 4,096 parameters.
pub(crate) const MAX_STATEMENT_PARAMS: usize = 4096;

/// `items` cut into statements of at most [`MAX_STATEMENT_PARAMS`]
/// parameters, each a power of two rows long (the largest first): few
/// statements, and few distinct ones for the statement cache to prepare.
pub(crate) fn statement_chunks<T>(items: &[T], cols: usize) -> impl Iterator<Item = &[T]> {
    let max = (MAX_STATEMENT_PARAMS / cols.max(1)).max(1);
    let max = 1usize << max.ilog2();
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = rest.len().min(max);
        let n = 1usize << n.ilog2();
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_lists_are_positional_on_sqlite_and_numbered_on_postgres() {
        assert_eq!(values_list(Backend::Sqlite, 2, 3), "(?,?,?),(?,?,?)");
        assert_eq!(
            values_list(Backend::Postgres, 2, 3),
            "($1,$2,$3),($4,$5,$6)"
        );
    }

    #[test]
    fn statements_take_every_row_once_in_order_in_few_shapes() {
        for (n, cols) in [(0, 16), (1, 16), (10, 16), (1000, 16), (513, 3), (7, 5000)] {
            let items: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = statement_chunks(&items, cols).collect();
            let flat: Vec<usize> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            assert_eq!(flat, items, "n={n} cols={cols}");
            for c in &chunks {
                assert!(c.len().is_power_of_two(), "{} rows", c.len());
                assert!(c.len() * cols <= MAX_STATEMENT_PARAMS || c.len() == 1);
            }
        }
        let items = vec![0u8; 1000];
        let sizes: Vec<usize> = statement_chunks(&items, 16).map(<[u8]>::len).collect();
        assert_eq!(sizes, [256, 256, 256, 128, 64, 32, 8]);
    }
}
