//! benchmark pieces (filled in later)
