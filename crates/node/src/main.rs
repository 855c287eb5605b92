//! `metropolis-node`: one Metropolis node process (see the `node` crate documentation).

#![forbid(unsafe_code)]

fn main() {
    std::process::exit(node::app::main())
}
