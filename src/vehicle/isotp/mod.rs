//! ISO-TP channels (work in progress).
