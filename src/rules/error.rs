//! Why a rule or a table did not load, with where: shared by the engine (rules) and the data
//! tables, so neither imports the other for it.

/// A rule that cannot be loaded, with where.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuleError {
    /// The file could not be read.
    #[error("{file}: {message}")]
    Io {
        /// File.
        file: String,
        /// Why.
        message: String,
    },
    /// Syntax or metadata error at a position.
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        /// File.
        file: String,
        /// 1-based line (0 when unknown).
        line: usize,
        /// 1-based column (0 when unknown).
        column: usize,
        /// What is wrong.
        message: String,
    },
}
