use serde_json::json;

use super::*;

fn run(source: &str, obj: &Value) -> Result<CelValue, EvalError> {
    let p = compile(source, &["self", "oldSelf"]).unwrap_or_else(|e| panic!("{source}: {e}"));
    let mut budget = RUNTIME_BUDGET;
    eval(&p, vec![("self", value(obj, None, false))], &mut budget)
}

fn yes(source: &str, obj: &Value) -> bool {
    match run(source, obj) {
        Ok(CelValue::Bool(b)) => b,
        other => panic!("{source}: {other:?}"),
    }
}

#[test]
fn rules_over_json() {
    let o = json!({"replicas": 3, "name": "Web-1", "items": [1, 2, 3], "ratio": 0.5, "labels": {"a": "b"}});
    assert!(yes("self.replicas <= 5", &o));
    assert!(!yes("self.replicas > 5", &o));
    assert!(yes("has(self.labels) && !has(self.missing)", &o));
    assert!(yes("size(self.items) == 3 && self.items.size() == 3", &o));
    assert!(yes(
        "self.name.startsWith('Web') && self.name.endsWith('-1')",
        &o
    ));
    assert!(yes(
        "self.name.lowerAscii() == 'web-1' && self.name.matches('^[A-Z]')",
        &o
    ));
    assert!(yes(
        "self.items.all(x, x > 0) && self.items.exists(x, x == 2)",
        &o
    ));
    assert!(yes("self.items.exists_one(x, x == 2)", &o));
    assert!(yes("self.items.map(x, x * 2) == [2, 4, 6]", &o));
    assert!(yes("self.items.filter(x, x > 1) == [2, 3]", &o));
    assert!(yes(
        "self.items.isSorted() && self.items.indexOf(2) == 1",
        &o
    ));
    assert!(yes(
        "self.items.sum() == 6 && self.items.max() == 3 && self.items.min() == 1",
        &o
    ));
    assert!(yes("self.items.lastIndexOf(7) == -1", &o));
    assert!(yes("self.name.find('[0-9]+') == '1'", &o));
    assert!(yes("'a1b22'.findAll('[0-9]+') == ['1', '22']", &o));
    assert!(yes(
        "sets.contains(self.items, [1, 3]) && !sets.intersects(self.items, [9])",
        &o
    ));
    assert!(yes("self.ratio < 1.0 && self.labels['a'] == 'b'", &o));
    assert!(yes(
        "self.name.indexOf('-') == 3 && self.name.split('-') == ['Web', '1']",
        &o
    ));
    assert!(yes("duration('1h') > duration('30m')", &o));
    assert!(yes("self.?missing.orValue(5) == 5", &o));
    assert!(yes("quantity('1Gi').isGreaterThan(quantity('1000Mi'))", &o));
    assert!(yes(
        "quantity('1Gi') == quantity('1024Mi') && quantity('500m').compareTo(quantity('1')) == -1",
        &o
    ));
    assert!(yes("quantity('1.5').add(quantity('500m')).asInteger() == 2 && quantity('2').sub(3).sign() == -1", &o));
    assert!(yes(
        "isQuantity('10Mi') && !isQuantity('ten') && quantity('250m').asApproximateFloat() == 0.25",
        &o
    ));
    assert!(yes(
        "!quantity('1.5').isInteger() && quantity('1k').isLessThan(quantity('1Ki'))",
        &o
    ));
}

#[test]
fn runtime_errors_read_as_upstreams() {
    let o = json!({"a": 1});
    assert_eq!(
        run("self.b == 1", &o),
        Err(EvalError::Failed("no such key: b".into()))
    );
    assert_eq!(
        run("self.a / 0 == 1", &o),
        Err(EvalError::Failed("division by zero".into()))
    );
}

#[test]
fn compile_errors_read_as_upstreams() {
    let err = compile("self.a ==", &["self"]).unwrap_err();
    assert!(
        err.0.starts_with("ERROR: <input>:1:10: Syntax error:"),
        "{err}"
    );
    assert_eq!(
        compile("object.a == 1", &["self"]).unwrap_err().0,
        "ERROR: <input>:1:1: undeclared reference to 'object' (in container '')"
    );
    assert_eq!(
        compile("self.a.frobnicate()", &["self"]).unwrap_err().0,
        "ERROR: <input>:1:18: undeclared reference to 'frobnicate' (in container '')"
    );
    // comprehension variables are bound, functions known
    compile("self.all(k, k.startsWith('x') && int('1') == 1)", &["self"]).expect("compiles");
    assert!(compile("self == oldSelf", &["self", "oldSelf"])
        .expect("compiles")
        .uses("oldSelf"));
}

#[test]
fn nested_loops_run_out_of_budget() {
    let big = json!({"l": (0..3000).collect::<Vec<_>>()});
    let p = compile("self.l.all(x, self.l.all(y, x + y >= 0))", &["self"]).expect("compiles");
    let mut budget = RUNTIME_BUDGET;
    let started = std::time::Instant::now();
    let r = eval(&p, vec![("self", value(&big, None, false))], &mut budget);
    assert_eq!(r, Err(EvalError::Cost));
    assert!(
        budget < RUNTIME_BUDGET - PER_CALL_LIMIT + 1,
        "spent the call's limit"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // a single pass over the same list is well within the limit
    let p = compile("self.l.all(x, x >= 0)", &["self"]).expect("compiles");
    let mut budget = RUNTIME_BUDGET;
    let r = eval(&p, vec![("self", value(&big, None, false))], &mut budget);
    assert_eq!(r, Ok(CelValue::Bool(true)));
}

#[test]
fn schema_aware_values_and_field_checks() {
    let schema = json!({"type": "object", "properties": {
        "metadata": {"type": "object"},
        "spec": {"type": "object", "properties": {
            "x-y": {"type": "string"}, "namespace": {"type": "string"}, "ratio": {"type": "number"},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}});
    let obj = json!({"metadata": {"name": "w", "labels": {"a": "b"}},
        "spec": {"x-y": "v", "namespace": "n", "ratio": 1, "free": {"z": 1}}});
    let p = compile(
        "self.metadata.name == 'w' && self.spec.x__dash__y == 'v' && self.spec.__namespace__ == 'n' && self.spec.ratio == 1.0 && self.spec.free.z == 1",
        &["self"],
    )
    .expect("compiles");
    assert!(check_fields(&p, &schema, true).is_empty());
    let mut budget = RUNTIME_BUDGET;
    let r = eval(
        &p,
        vec![("self", value(&obj, Some(&schema), true))],
        &mut budget,
    );
    assert_eq!(r, Ok(CelValue::Bool(true)));

    let p = compile(
        "self.spec.replicas > 1 && self.metadata.labels.size() > 0",
        &["self"],
    )
    .expect("compiles");
    assert_eq!(
        check_fields(&p, &schema, true),
        [
            "ERROR: <input>:1:10: undefined field 'replicas'",
            "ERROR: <input>:1:40: undefined field 'labels'"
        ]
    );
    assert_eq!(
        escape("a.b/c-d__e").as_deref(),
        Some("a__dot__b__slash__c__dash__d__underscores__e")
    );
    assert_eq!(escape("1abc"), None);
}

// Expected values below are the examples in upstream's library documentation
// (k8s.io/apiserver/pkg/cel/library: ip.go, cidr.go, urls.go, format.go, semverlib.go)
// and Go's netip/net/url behaviour.

fn all_true(cases: &[&str]) {
    let o = json!({});
    for c in cases {
        assert!(yes(c, &o), "{c} is false");
    }
}

fn fails(source: &str) -> String {
    match run(source, &json!({})) {
        Err(EvalError::Failed(e)) => e,
        other => panic!("{source}: expected an error, got {other:?}"),
    }
}

#[test]
fn ip_library() {
    all_true(&[
        "isIP('127.0.0.1') && isIP('::1')",
        "!isIP('127.0.0.256') && !isIP(':::1') && !isIP('127.0.0.01')",
        "!isIP('::ffff:1.2.3.4') && !isIP('fe80::1%eth0')",
        "ip.isCanonical('127.0.0.1') && ip.isCanonical('::1') && ip.isCanonical('2001:db8::abcd')",
        "!ip.isCanonical('2001:DB8::ABCD') && !ip.isCanonical('2001:db8::0:0:0:abcd')",
        "ip('127.0.0.1').family() == 4 && ip('::1').family() == 6",
        "ip('127.0.0.1').isLoopback() && ip('::1').isLoopback() && !ip('1.2.3.4').isLoopback()",
        "ip('0.0.0.0').isUnspecified() && ip('::').isUnspecified() && !ip('127.0.0.1').isUnspecified()",
        "ip('224.0.0.1').isLinkLocalMulticast() && !ip('224.0.1.1').isLinkLocalMulticast()",
        "ip('ff02::1').isLinkLocalMulticast() && !ip('fd00::1').isLinkLocalMulticast()",
        "ip('169.254.169.254').isLinkLocalUnicast() && !ip('192.168.0.1').isLinkLocalUnicast()",
        "ip('fe80::1').isLinkLocalUnicast() && !ip('fd80::1').isLinkLocalUnicast()",
        "ip('192.168.0.1').isGlobalUnicast() && !ip('255.255.255.255').isGlobalUnicast()",
        "ip('2001:db8::abcd').isGlobalUnicast() && !ip('ff00::1').isGlobalUnicast()",
        "string(ip('127.0.0.1')) == '127.0.0.1' && string(ip('2001:db8:0:0::1')) == '2001:db8::1'",
        "ip('::1') == ip('0:0::1') && ip('10.0.0.1') != ip('10.0.0.2')",
    ]);
    assert_eq!(
        fails("ip('127.0.0.256').family() == 4"),
        "IP Address \"127.0.0.256\" parse error during conversion from string: ParseAddr(\"127.0.0.256\"): unable to parse IP"
    );
    assert_eq!(
        fails("ip('::ffff:1.2.3.4').family() == 6"),
        "IPv4-mapped IPv6 address \"::ffff:1.2.3.4\" is not allowed"
    );
}

#[test]
fn cidr_library() {
    all_true(&[
        "isCIDR('192.168.0.0/16') && isCIDR('::1/128') && isCIDR('192.168.0.1/16')",
        "!isCIDR('192.168.0.0/33') && !isCIDR('::1/129') && !isCIDR('192.168.0.0') && !isCIDR('::ffff:1.2.3.4/120')",
        "cidr('192.168.0.0/24').containsIP(ip('192.168.0.1')) && !cidr('192.168.0.0/24').containsIP(ip('192.168.1.1'))",
        "cidr('192.168.0.0/24').containsIP('192.168.0.1') && cidr('2001:db8::/32').containsIP(ip('2001:db8::1'))",
        "!cidr('2001:db8::/32').containsIP(ip('192.168.0.1')) && cidr('0.0.0.0/0').containsIP('8.8.8.8')",
        "cidr('192.168.0.0/16').containsCIDR(cidr('192.168.10.0/24')) && !cidr('192.168.1.0/24').containsCIDR(cidr('192.168.2.0/24'))",
        "cidr('192.168.0.0/16').containsCIDR('192.168.10.0/24') && !cidr('192.168.10.0/24').containsCIDR('192.168.0.0/16')",
        "cidr('192.168.0.0/24').ip() == ip('192.168.0.0') && cidr('192.168.0.1/24').ip() == ip('192.168.0.1')",
        "cidr('192.168.0.1/24').masked() == cidr('192.168.0.0/24') && cidr('::1/128').masked() == cidr('::1/128')",
        "cidr('2001:db8::1/32').masked() == cidr('2001:db8::/32') && cidr('192.168.0.0/16').prefixLength() == 16",
        "string(cidr('192.168.0.0/24')) == '192.168.0.0/24' && string(cidr('192.168.0.1/24').masked()) == '192.168.0.0/24'",
    ]);
    assert!(fails("cidr('192.168.0.0/33').prefixLength() == 1")
        .starts_with("network address parse error during conversion from string:"));
}

#[test]
fn url_library() {
    all_true(&[
        "isURL('https://user:pass@example.com:80/path?query=val#fragment') && isURL('/absolute-path')",
        "!isURL('https://a:b:c/') && !isURL('../relative-path') && !isURL('example.com')",
        "url('/path').getScheme() == '' && url('https://example.com/path').getScheme() == 'https'",
        "url('https://example.com/').getHost() == 'example.com' && url('https://example.com:80/').getHost() == 'example.com:80'",
        "url('https://127.0.0.1:80/').getHost() == '127.0.0.1:80' && url('https://[::1]:80/').getHost() == '[::1]:80'",
        "url('/path').getHost() == '' && url('https://[::1]:80/').getHostname() == '::1'",
        "url('https://127.0.0.1:80/').getHostname() == '127.0.0.1' && url('https://example.com/').getHostname() == 'example.com'",
        "url('https://example.com:80/').getPort() == '80' && url('https://example.com/').getPort() == ''",
        "url('https://example.com/path').getEscapedPath() == '/path' && url('https://example.com').getEscapedPath() == ''",
        "url('https://example.com/path with spaces/').getEscapedPath() == '/path%20with%20spaces/'",
        "url('https://example.com/a%2Fb').getEscapedPath() == '/a%2Fb'",
        "url('https://example.com/path?k1=a&k2=b&k2=c').getQuery() == {'k1': ['a'], 'k2': ['b', 'c']}",
        "url('https://example.com/path?key with spaces=value with spaces').getQuery() == {'key with spaces': ['value with spaces']}",
        "url('https://example.com/path?').getQuery() == {} && url('https://example.com/path').getQuery() == {}",
        "url('https://example.com/p?a=1#frag').getQuery() == {'a': ['1']}",
    ]);
    assert_eq!(
        fails("url('../relative-path').getHost() == ''"),
        "URL parse error during conversion from string: parse \"../relative-path\": invalid URI for request"
    );
}

#[test]
fn format_library() {
    all_true(&[
        "!format.dns1123Label().validate('my-name').hasValue()",
        "format.dns1123Label().validate('My_Name').value() == [\"a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')\"]",
        "format.dns1123Label().validate('a.b').value() == ['must not contain dots']",
        "!format.dns1123Subdomain().validate('example.com').hasValue() && format.dns1123Subdomain().validate('-x').hasValue()",
        "!format.dns1035Label().validate('abc-123').hasValue() && format.dns1035Label().validate('1abc').hasValue()",
        "!format.dns1123LabelPrefix().validate('web-').hasValue() && format.dns1123Label().validate('web-').hasValue()",
        "!format.qualifiedName().validate('example.com/MyName').hasValue()",
        "format.qualifiedName().validate('/x').value() == ['prefix part must be non-empty']",
        "!format.labelValue().validate('').hasValue() && !format.labelValue().validate('my_value').hasValue()",
        "format.labelValue().validate('-x').hasValue()",
        "!format.uri().validate('https://example.com/').hasValue() && format.uri().validate('example').hasValue()",
        "!format.uuid().validate('123e4567-e89b-12d3-a456-426614174000').hasValue()",
        "format.uuid().validate('nope').value() == ['does not match the UUID format']",
        "!format.byte().validate('aGVsbG8=').hasValue() && format.byte().validate('!!').hasValue()",
        "!format.date().validate('2024-02-29').hasValue() && format.date().validate('2023-02-29').hasValue()",
        "!format.datetime().validate('2024-01-01T10:00:00Z').hasValue() && format.datetime().validate('2024-01-01').hasValue()",
        "format.named('dns1123Label').hasValue() && !format.named('nope').hasValue()",
        "format.named('dns1035Label').value().validate('1abc').hasValue()",
    ]);
}

#[test]
fn semver_library() {
    all_true(&[
        "isSemver('1.0.0') && isSemver('1.2.3-alpha.1+build.5') && !isSemver('hello')",
        "!isSemver('v1.0.0') && isSemver('v1.0.0', true) && isSemver('v1.0', true) && !isSemver('1.0')",
        "!isSemver('01.0.0') && isSemver('01.0.0', true) && !isSemver('1.0-rc', true)",
        "semver('1.2.3').major() == 1 && semver('1.2.3').minor() == 2 && semver('1.2.3').patch() == 3",
        "semver('v2.3', true).major() == 2 && semver('v2.3', true).minor() == 3 && semver('v2.3', true).patch() == 0",
        "semver('1.2.3').isLessThan(semver('1.2.4')) && semver('1.2.3').isGreaterThan(semver('1.1.9'))",
        "semver('1.2.3').compareTo(semver('1.2.3')) == 0 && semver('1.2.3').compareTo(semver('2.0.0')) == -1",
        "semver('1.0.0-alpha').isLessThan(semver('1.0.0')) && semver('1.0.0-alpha.1').isLessThan(semver('1.0.0-alpha.beta'))",
        "semver('1.0.0-2').isLessThan(semver('1.0.0-11')) && semver('1.0.0+a').compareTo(semver('1.0.0+b')) == 0",
        "semver('1.0.0') == semver('1.0.0')",
    ]);
    assert_eq!(
        fails("semver('1.0').major() == 1"),
        "No Major.Minor.Patch elements found"
    );
    assert_eq!(
        fails("semver('1.01.0').major() == 1"),
        "Minor number must not contain leading zeroes \"01\""
    );
}

#[test]
fn type_errors_upstreams_checker_finds() {
    let schema = json!({"type": "object", "properties": {
        "replicas": {"type": "integer"}, "name": {"type": "string"}, "ratio": {"type": "number"},
        "when": {"type": "string", "format": "date-time"},
        "port": {"x-kubernetes-int-or-string": true}}});
    let errs = |src: &str| check_types(&compile(src, &["self"]).expect(src), &schema, false);
    assert_eq!(
        errs("self.replicas.startsWith('a')"),
        ["ERROR: <input>:1:25: found no matching overload for 'startsWith' applied to 'int.(string)'"]
    );
    assert_eq!(
        errs("self.replicas == 'a'"),
        ["ERROR: <input>:1:15: found no matching overload for '_==_' applied to '(int, string)'"]
    );
    assert_eq!(
        errs("size(self.replicas) > 0"),
        ["ERROR: <input>:1:5: found no matching overload for 'size' applied to '(int)'"]
    );
    assert_eq!(
        errs("self.name.startsWith(1)"),
        ["ERROR: <input>:1:21: found no matching overload for 'startsWith' applied to 'string.(int)'"]
    );
    assert_eq!(
        errs("isIP(self.replicas) && semver(self.name, 'yes').major() == 1"),
        [
            "ERROR: <input>:1:5: found no matching overload for 'isIP' applied to '(int)'",
            "ERROR: <input>:1:30: found no matching overload for 'semver' applied to '(string, string)'"
        ]
    );
    // what the checker accepts, or what is not plainly typed, passes
    for ok in [
        "self.name.startsWith('a') && self.replicas > 1 && self.ratio < 2",
        "self.replicas < self.ratio && self.ratio >= 1",
        "self.port == 'http' || self.port == 80",
        "timestamp(self.when) > timestamp('2020-01-01T00:00:00Z')",
        "self.name + 'x' == 'ax' && size(self.name) > 0",
        "isIP(self.name) && semver(self.name, true).major() == 1 && quantity('1') == quantity('1')",
    ] {
        assert!(errs(ok).is_empty(), "{ok}: {:?}", errs(ok));
    }
}

#[test]
fn authorizer_library() {
    use crate::auth::UserInfo;
    use crate::rbac::Attributes;
    // a stand-in authorizer: alice may get deployments/scale "web" in "ns" and /healthz;
    // the service account team/builder may list pods in team
    let authorize: authz::Authorize = Arc::new(|u: &UserInfo, a: &Attributes| match a {
        Attributes::Resource {
            verb,
            group,
            resource,
            namespace,
            name,
            ..
        } => {
            let alice = u.name == "alice"
                && verb == "get"
                && group == "apps"
                && resource == "deployments/scale"
                && namespace.as_deref() == Some("ns")
                && name.as_deref() == Some("web");
            let builder = u.name == "system:serviceaccount:team:builder"
                && u.groups.iter().any(|g| g == "system:serviceaccounts:team")
                && verb == "list"
                && group.is_empty()
                && resource == "pods"
                && namespace.as_deref() == Some("team")
                && name.is_none();
            (
                alice || builder,
                if alice {
                    "allowed by test".into()
                } else {
                    String::new()
                },
            )
        }
        Attributes::NonResource { verb, path } => {
            (verb == "get" && path == "/healthz", String::new())
        }
    });
    let user = UserInfo {
        name: "alice".into(),
        uid: "1".into(),
        groups: vec!["system:authenticated".into()],
        extra: Default::default(),
    };
    let az = authz::Authz::new(
        user,
        authorize,
        authz::RequestResource {
            group: "apps".into(),
            resource: "deployments".into(),
            subresource: "scale".into(),
            namespace: "ns".into(),
            name: "web".into(),
        },
    );
    let check = |src: &str| -> bool {
        let p = compile(src, &["authorizer"]).unwrap_or_else(|e| panic!("{src}: {e}"));
        let mut budget = RUNTIME_BUDGET;
        match eval(&p, az.variables(), &mut budget) {
            Ok(CelValue::Bool(b)) => b,
            other => panic!("{src}: {other:?}"),
        }
    };
    assert!(check("authorizer.group('apps').resource('deployments').subresource('scale').namespace('ns').name('web').check('get').allowed()"));
    assert!(!check("authorizer.group('apps').resource('deployments').namespace('ns').name('web').check('get').allowed()"));
    assert!(!check("authorizer.group('apps').resource('deployments').subresource('scale').namespace('ns').name('web').check('delete').allowed()"));
    assert!(check("authorizer.requestResource.check('get').allowed() && authorizer.requestResource.check('get').reason() == 'allowed by test'"));
    assert!(check("!authorizer.requestResource.check('get').errored() && authorizer.requestResource.check('get').error() == ''"));
    assert!(check("authorizer.path('/healthz').check('get').allowed() && !authorizer.path('/metrics').check('get').allowed()"));
    assert!(check("authorizer.serviceAccount('team', 'builder').group('').resource('pods').namespace('team').check('list').allowed()"));
    assert!(!check(
        "authorizer.group('').resource('pods').namespace('team').check('list').allowed()"
    ));
}

#[test]
fn library_namespaces_do_not_shadow_loop_variables() {
    // `ip` is both a function namespace (`ip.isCanonical`) and a common loop variable name
    let o = json!({"ips": ["10.0.0.1", "10.0.0.2"]});
    assert!(yes(
        "self.ips.all(ip, ip.startsWith('10.') && isIP(ip) && ip(ip).family() == 4)",
        &o
    ));
    assert!(yes("self.ips.exists(format, format.endsWith('.2'))", &o));
}
