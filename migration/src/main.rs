use sea_orm_migration::prelude::*;

/// `DATABASE_URL` names the database, as for the service.
#[tokio::main]
async fn main() {
    cli::run_cli(migration::Migrator).await;
}
