//! `switchyard bench` (placeholder while the bench is written).
use crate::cli::BenchArgs;
use crate::config::Config;
use crate::error::Error;

pub async fn run(_config: Config, _args: BenchArgs) -> Result<(), Error> {
    Err(Error::internal("bench not built yet"))
}
