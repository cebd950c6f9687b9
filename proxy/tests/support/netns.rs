//! Network namespaces, veths and echo servers for the end-to-end tests.
