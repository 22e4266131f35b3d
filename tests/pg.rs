//! A PostgreSQL database per test, on the server `cargo xtask test` starts
//! (its URL in `FHIRLIFT_TEST_PG_URL`).

/// The server's URL; a clear failure when the tests were not started by
/// `cargo xtask test` (which starts PostgreSQL) nor given a server.
pub fn server_url() -> String {
    std::env::var("FHIRLIFT_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "FHIRLIFT_TEST_PG_URL is not set: run the tests with `cargo xtask test`, which starts a throwaway PostgreSQL, or point it at a server (postgres://user@host:port/db) whose user may create databases"
        )
    })
}

/// Runs SQL on a server; panics naming the SQL when it fails.
pub fn execute(url: &str, sql: &str) {
    try_execute(url, sql).unwrap_or_else(|e| panic!("{e}\nin: {sql}"));
}

/// Runs SQL on a server.
pub fn try_execute(url: &str, sql: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("cannot connect to the test PostgreSQL: {e}"))?;
        let task = tokio::spawn(connection);
        let result = client
            .batch_execute(sql)
            .await
            .map_err(|e| format!("{e:?}"));
        drop(client);
        let _ = task.await;
        result
    })
}

/// A fresh database, dropped when the test ends.
pub struct TestDb {
    pub url: String,
    pub name: String,
    server: String,
}

impl TestDb {
    /// Creates `fhirlift_<tag>_<pid>` on the test server.
    pub fn create(tag: &str) -> TestDb {
        let server = server_url();
        let name = format!("fhirlift_{tag}_{}", std::process::id());
        execute(&server, &format!("DROP DATABASE IF EXISTS {name}"));
        execute(
            &server,
            &format!("CREATE DATABASE {name} ENCODING 'UTF8' TEMPLATE template0"),
        );
        // plain connections: one test turns TLS on at the shared server,
        // and the others must not depend on trusting its certificate
        let url = match server.rsplit_once('/') {
            Some((base, _)) if base.contains("://") && base.len() > "postgres://".len() => {
                format!("{base}/{name}?sslmode=disable")
            }
            _ => format!("{server} dbname={name} sslmode=disable"),
        };
        TestDb { url, name, server }
    }

    pub fn execute(&self, sql: &str) {
        execute(&self.url, sql);
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            execute(
                &self.server,
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            );
        }
    }
}
