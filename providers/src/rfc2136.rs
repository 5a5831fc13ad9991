//! (Being written: this module lands in the next commits.)
