//! Runs the tests' API stand-in (tests/common/api_mock.rs) as a server, for `bench/http.sh`:
//! `cargo run --release --example api_server -- RECORDS PAGE_SIZE` prints its URL and serves
//! `/items` (RECORDS records, PAGE_SIZE per page, next-token pagination) until killed.

#[allow(dead_code)]
#[path = "../tests/common/api_mock.rs"]
mod api_mock;
#[allow(dead_code)] // the tests use more of them than this runner
#[path = "../tests/common/es_mock.rs"]
mod es_mock;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let [records, page_size] = args[..] else {
        return Err("usage: api_server RECORDS PAGE_SIZE".into());
    };
    let mock = api_mock::ApiMock::start(api_mock::ApiFaults {
        records,
        page_size,
        ..api_mock::ApiFaults::default()
    });
    println!("{}", mock.url);
    loop {
        std::thread::park();
    }
}
