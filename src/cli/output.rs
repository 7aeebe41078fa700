//! `-o/--output table|json|yaml` for every command that prints data, rendered in one place.

use serde::Serialize;

/// How a command prints its result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The data as JSON (stable field names, for scripts).
    Json,
    /// The same data as YAML.
    Yaml,
}

/// `-o/--output`, flattened into every command that prints data.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub format: OutputFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("encoding JSON: {0}")]
    Json(serde_json::Error),
    #[error("encoding YAML: {0}")]
    Yaml(crate::yaml::YamlError),
}

/// `value` in `format`; `table` renders it for people. Ends with a newline.
pub fn render<T: Serialize>(
    format: OutputFormat,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<String, OutputError> {
    Ok(match format {
        OutputFormat::Table => table(value),
        OutputFormat::Json => {
            serde_json::to_string_pretty(value).map_err(OutputError::Json)? + "\n"
        }
        OutputFormat::Yaml => crate::yaml::to_string(value).map_err(OutputError::Yaml)?,
    })
}

/// Rows of cells as left-aligned columns two spaces apart; trailing spaces trimmed.
pub fn columns<R: AsRef<[String]>>(rows: &[R]) -> String {
    let width = |i: usize| {
        rows.iter()
            .filter_map(|row| row.as_ref().get(i))
            .map(|cell| cell.chars().count())
            .max()
            .unwrap_or(0)
    };
    let count = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..count).map(width).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .as_ref()
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Item {
        name: &'static str,
        count: u32,
    }

    #[test]
    fn each_format_renders_the_same_data() {
        let item = Item {
            name: "web",
            count: 2,
        };
        let table = |i: &Item| format!("{} {}\n", i.name, i.count);
        assert_eq!(
            render(OutputFormat::Table, &item, table).unwrap(),
            "web 2\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(OutputFormat::Json, &item, table).unwrap()).unwrap();
        assert_eq!(json, serde_json::json!({"name": "web", "count": 2}));
        let yaml: serde_json::Value =
            crate::yaml::from_str(&render(OutputFormat::Yaml, &item, table).unwrap()).unwrap();
        assert_eq!(yaml, json);
    }

    #[test]
    fn columns_align_on_the_widest_cell() {
        let rows = [
            vec!["NAME".to_owned(), "STATUS".to_owned()],
            vec!["a-long-name".to_owned(), "OK".to_owned()],
            vec!["b".to_owned(), String::new()],
        ];
        assert_eq!(columns(&rows), "NAME         STATUS\na-long-name  OK\nb\n");
    }
}
