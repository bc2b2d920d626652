//! Runs the tests' in-repo Elasticsearch stand-in as a server, for `bench/sinks.sh`:
//! `cargo run --release --example es_mock` prints its URL and serves until killed.

#[allow(dead_code)] // the tests use more of it than this runner
#[path = "../tests/common/es_mock.rs"]
mod es_mock;

fn main() {
    let mock = es_mock::EsMock::start(es_mock::Faults::default());
    println!("{}", mock.url);
    loop {
        std::thread::park();
    }
}
