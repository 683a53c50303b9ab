//! pock facade.
