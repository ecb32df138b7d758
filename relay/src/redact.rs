//! Redacting secrets from connection strings before they are printed.

/// `url` with the password replaced by `***`, for logs and errors.
///
/// Handles `scheme://user:pass@host…` and `scheme://:pass@host…` (the usual Redis form), and a
/// `password=` query parameter (as PostgreSQL accepts). Anything else is returned unchanged. When
/// in doubt it redacts too much rather than too little: the result is for display only.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The query starts at the first `?` (an unencoded `?` in a password is not valid, and would at
    // worst make us redact the query instead).
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    // The userinfo ends at the *last* `@` before the query, so a password with an unencoded `@`
    // or `/` is still redacted whole.
    let mut out = format!("{scheme}://");
    match before_query.rfind('@') {
        Some(at) => {
            let (userinfo, host_and_path) = before_query.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(host_and_path);
        }
        None => out.push_str(before_query),
    }
    if let Some(query) = query {
        out.push('?');
        let parameters: Vec<String> = query
            .split('&')
            .map(|parameter| match parameter.split_once('=') {
                Some((name, _)) if name.eq_ignore_ascii_case("password") => format!("{name}=***"),
                _ => parameter.to_owned(),
            })
            .collect();
        out.push_str(&parameters.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_the_password_in_userinfo() {
        assert_eq!(
            redact_url("redis://user:secret@example.com:6379/0"),
            "redis://user:***@example.com:6379/0"
        );
        assert_eq!(
            redact_url("redis://:secret@127.0.0.1:6379"),
            "redis://:***@127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("postgres://ferry:p%40ss@db.internal/ferry?sslmode=require"),
            "postgres://ferry:***@db.internal/ferry?sslmode=require"
        );
        assert_eq!(redact_url("rediss://u:s@h"), "rediss://u:***@h");
    }
    #[test]
    fn redacts_passwords_with_unencoded_separators() {
        assert_eq!(
            redact_url("redis://u:a@b/c@host:1/2"),
            "redis://u:***@host:1/2"
        );
        assert_eq!(redact_url("redis://u:pa:ss@host"), "redis://u:***@host");
    }
    #[test]
    fn redacts_a_password_query_parameter() {
        assert_eq!(
            redact_url("postgres://db/ferry?user=ferry&password=secret&sslmode=disable"),
            "postgres://db/ferry?user=ferry&password=***&sslmode=disable"
        );
        assert_eq!(
            redact_url("postgres://db/ferry?PASSWORD=x"),
            "postgres://db/ferry?PASSWORD=***"
        );
    }
    #[test]
    fn leaves_urls_without_a_password_alone() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://user@host:6379",
            "sqlite:///var/lib/ferry/ferry.db",
            "sqlite://data/ferry.db?mode=rwc",
            "not a url",
            "",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }
    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(redact_url("postgres://u@db/x"), "postgres://u@db/x");
        assert_eq!(
            redact_url("sqlite://data/a@b.db?mode=rwc"),
            "sqlite://data/a@b.db?mode=rwc"
        );
        assert_eq!(
            redact_url("postgres://u:p@ss@db/x"),
            "postgres://u:***@db/x"
        );
    }
}
