//! The real kubectl 1.37's `get` prints upstream's columns for every built-in kind: the
//! server's Tables (`as=Table`) carry the header and cells upstream's printers make.

mod common;

use std::collections::HashMap;

use common::{write, TestServer};

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: print}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick, namespace: print}
spec:
  schedule: "*/5 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: tick, image: "busybox:1.36"}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: once, namespace: print}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: work, image: "busybox:1.36"}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web, namespace: print}
spec:
  minAvailable: 1
  selector: {matchLabels: {app: web}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: print}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      nodeSelector: {kubernetes.io/os: linux}
      containers: [{name: agent, image: "busybox:1.36"}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: print}
spec:
  serviceName: db
  replicas: 2
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: "postgres:17"}]
---
apiVersion: v1
kind: ReplicationController
metadata: {name: legacy, namespace: print}
spec:
  replicas: 2
  selector: {app: legacy}
  template:
    metadata: {labels: {app: legacy}}
    spec:
      containers: [{name: app, image: "nginx:1.27"}]
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web, namespace: print}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 1
  maxReplicas: 5
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: builder, namespace: print}
secrets: [{name: builder-token}]
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: leader, namespace: print}
spec: {holderIdentity: node-1}
---
apiVersion: v1
kind: Endpoints
metadata: {name: ext, namespace: print}
subsets:
- addresses: [{ip: 10.0.0.1}, {ip: 10.0.0.2}]
  ports: [{name: http, port: 80}, {name: https, port: 443}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-1, namespace: print}
addressType: IPv4
ports: [{name: http, port: 80, protocol: TCP}]
endpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.2]}]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: print}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: fast
  resources: {requests: {storage: 1Gi}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: print}
spec:
  ingressClassName: nginx
  rules:
  - host: shop.example
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-only, namespace: print}
spec:
  podSelector: {matchLabels: {app: db}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader, namespace: print}
rules: [{apiGroups: [""], resources: [pods], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: read, namespace: print}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}
subjects:
- {kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}
- {kind: ServiceAccount, name: builder, namespace: print}
---
apiVersion: v1
kind: LimitRange
metadata: {name: limits, namespace: print}
spec:
  limits: [{type: Container, default: {cpu: 500m}}]
---
apiVersion: v1
kind: PodTemplate
metadata: {name: tmpl, namespace: print}
template:
  metadata: {labels: {app: tmpl}}
  spec:
    containers: [{name: app, image: "nginx:1.27"}]
---
apiVersion: v1
kind: Event
metadata: {name: tick.1, namespace: print}
involvedObject: {kind: CronJob, name: tick, namespace: print}
reason: SawCompletedJob
message: Saw completed job
type: Normal
count: 2
firstTimestamp: "2024-01-01T00:00:00Z"
lastTimestamp: "2024-01-01T00:05:00Z"
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: print-pv}
spec:
  capacity: {storage: 1024Mi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: fast
  hostPath: {path: /tmp/print-pv}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: fast
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: rancher.io/local-path
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: print-high}
value: 1000
preemptionPolicy: Never
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: nginx}
spec: {controller: k8s.io/ingress-nginx}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: print-view}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects: [{kind: Group, name: devs, apiGroup: rbac.authorization.k8s.io}]
"#;

/// One kind's table as kubectl laid it out: its header, and each row's cells by column
/// (cut at the header's column starts, so empty cells stay in place).
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn row(&self, name: &str) -> HashMap<&str, &str> {
        let row = self
            .rows
            .iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("no row {name} in {:?}", self.rows));
        self.header
            .iter()
            .map(String::as_str)
            .zip(row.iter().map(String::as_str))
            .collect()
    }
}

/// The tables of `kubectl get a/x b/y ...`, by the kind prefix of their names.
fn tables(out: &str) -> HashMap<String, Table> {
    let mut found = HashMap::new();
    for block in out.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut lines = block.lines();
        let head = lines.next().expect("header");
        let header: Vec<String> = head
            .split("  ")
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(String::from)
            .collect();
        let mut starts: Vec<usize> = Vec::new();
        for h in &header {
            let from = starts.last().map_or(0, |s| s + 1);
            starts.push(from + head[from..].find(h.as_str()).expect("header column"));
        }
        let rows: Vec<Vec<String>> = lines
            .map(|l| {
                (0..starts.len())
                    .map(|i| {
                        let end = starts.get(i + 1).copied().unwrap_or(l.len()).min(l.len());
                        l.get(starts[i]..end).unwrap_or("").trim().to_string()
                    })
                    .collect()
            })
            .collect();
        let kind = rows[0][0].split('/').next().expect("kind").to_string();
        found.insert(kind, Table { header, rows });
    }
    found
}

#[test]
fn kubectl_get_prints_upstreams_columns_for_every_kind() {
    let s = TestServer::start();
    let f = write(&s, "objects.yaml", OBJECTS);
    s.kubectl(&["create", "-f", &f]);

    let out = s.kubectl(&[
        "get",
        "-n",
        "print",
        "cronjob/tick",
        "job/once",
        "pdb/web",
        "daemonset/agent",
        "statefulset/db",
        "rc/legacy",
        "hpa/web",
        "serviceaccount/builder",
        "lease/leader",
        "endpoints/ext",
        "endpointslice/ext-1",
        "pvc/data",
        "ingress/web",
        "networkpolicy/db-only",
        "role/reader",
        "rolebinding/read",
        "limitrange/limits",
        "podtemplate/tmpl",
        "pv/print-pv",
        "storageclass/fast",
        "priorityclass/print-high",
        "ingressclass/nginx",
        "clusterrolebinding/print-view",
    ]);
    let t = tables(&out);
    let check = |kind: &str, header: &[&str], name: &str, cells: &[(&str, &str)]| {
        let table = t
            .get(kind)
            .unwrap_or_else(|| panic!("no {kind} table in:\n{out}"));
        assert_eq!(table.header, header, "{kind}:\n{out}");
        let row = table.row(&format!("{kind}/{name}"));
        for (column, want) in cells {
            assert_eq!(row[column], *want, "{kind} {column}:\n{out}");
        }
        assert!(
            row.get("AGE").is_none_or(|a| a.ends_with('s')),
            "{kind} AGE: {row:?}"
        );
    };
    check(
        "cronjob.batch",
        &[
            "NAME",
            "SCHEDULE",
            "TIMEZONE",
            "SUSPEND",
            "ACTIVE",
            "LAST SCHEDULE",
            "AGE",
        ],
        "tick",
        &[
            ("SCHEDULE", "*/5 * * * *"),
            ("TIMEZONE", "<none>"),
            ("SUSPEND", "False"),
            ("ACTIVE", "0"),
            ("LAST SCHEDULE", "<none>"),
        ],
    );
    check(
        "job.batch",
        &["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
        "once",
        &[
            ("STATUS", "Running"),
            ("COMPLETIONS", "0/1"),
            ("DURATION", ""),
        ],
    );
    check(
        "poddisruptionbudget.policy",
        &[
            "NAME",
            "MIN AVAILABLE",
            "MAX UNAVAILABLE",
            "ALLOWED DISRUPTIONS",
            "AGE",
        ],
        "web",
        &[
            ("MIN AVAILABLE", "1"),
            ("MAX UNAVAILABLE", "N/A"),
            ("ALLOWED DISRUPTIONS", "0"),
        ],
    );
    check(
        "daemonset.apps",
        &[
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "NODE SELECTOR",
            "AGE",
        ],
        "agent",
        &[
            ("DESIRED", "0"),
            ("NODE SELECTOR", "kubernetes.io/os=linux"),
        ],
    );
    check(
        "statefulset.apps",
        &["NAME", "READY", "AGE"],
        "db",
        &[("READY", "0/2")],
    );
    check(
        "replicationcontroller",
        &["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
        "legacy",
        &[("DESIRED", "2"), ("CURRENT", "0"), ("READY", "0")],
    );
    check(
        "horizontalpodautoscaler.autoscaling",
        &[
            "NAME",
            "REFERENCE",
            "TARGETS",
            "MINPODS",
            "MAXPODS",
            "REPLICAS",
            "AGE",
        ],
        "web",
        &[
            ("REFERENCE", "Deployment/web"),
            ("TARGETS", "cpu: <unknown>/50%"),
            ("MINPODS", "1"),
            ("MAXPODS", "5"),
            ("REPLICAS", "0"),
        ],
    );
    check(
        "serviceaccount",
        &["NAME", "SECRETS", "AGE"],
        "builder",
        &[("SECRETS", "1")],
    );
    check(
        "lease.coordination.k8s.io",
        &["NAME", "HOLDER", "AGE"],
        "leader",
        &[("HOLDER", "node-1")],
    );
    check(
        "endpoints",
        &["NAME", "ENDPOINTS", "AGE"],
        "ext",
        &[(
            "ENDPOINTS",
            "10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 1 more...",
        )],
    );
    check(
        "endpointslice.discovery.k8s.io",
        &["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
        "ext-1",
        &[
            ("ADDRESSTYPE", "IPv4"),
            ("PORTS", "80"),
            ("ENDPOINTS", "10.0.0.1,10.0.0.2"),
        ],
    );
    check(
        "persistentvolumeclaim",
        &[
            "NAME",
            "STATUS",
            "VOLUME",
            "CAPACITY",
            "ACCESS MODES",
            "STORAGECLASS",
            "VOLUMEATTRIBUTESCLASS",
            "AGE",
        ],
        "data",
        &[
            ("STATUS", "Pending"),
            ("VOLUME", ""),
            ("CAPACITY", ""),
            ("STORAGECLASS", "fast"),
            ("VOLUMEATTRIBUTESCLASS", "<unset>"),
        ],
    );
    check(
        "ingress.networking.k8s.io",
        &["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"],
        "web",
        &[
            ("CLASS", "nginx"),
            ("HOSTS", "shop.example"),
            ("ADDRESS", ""),
            ("PORTS", "80"),
        ],
    );
    check(
        "networkpolicy.networking.k8s.io",
        &["NAME", "POD-SELECTOR", "AGE"],
        "db-only",
        &[("POD-SELECTOR", "app=db")],
    );
    check(
        "rolebinding.rbac.authorization.k8s.io",
        &["NAME", "ROLE", "AGE"],
        "read",
        &[("ROLE", "Role/reader")],
    );
    check(
        "podtemplate",
        &["NAME", "CONTAINERS", "IMAGES", "POD LABELS"],
        "tmpl",
        &[
            ("CONTAINERS", "app"),
            ("IMAGES", "nginx:1.27"),
            ("POD LABELS", "app=tmpl"),
        ],
    );
    check(
        "persistentvolume",
        &[
            "NAME",
            "CAPACITY",
            "ACCESS MODES",
            "RECLAIM POLICY",
            "STATUS",
            "CLAIM",
            "STORAGECLASS",
            "VOLUMEATTRIBUTESCLASS",
            "REASON",
            "AGE",
        ],
        "print-pv",
        &[
            ("CAPACITY", "1Gi"),
            ("ACCESS MODES", "RWO"),
            ("RECLAIM POLICY", "Retain"),
            ("STATUS", "Pending"),
            ("CLAIM", ""),
            ("STORAGECLASS", "fast"),
        ],
    );
    check(
        "storageclass.storage.k8s.io",
        &[
            "NAME",
            "PROVISIONER",
            "RECLAIMPOLICY",
            "VOLUMEBINDINGMODE",
            "ALLOWVOLUMEEXPANSION",
            "AGE",
        ],
        "fast (default)",
        &[
            ("PROVISIONER", "rancher.io/local-path"),
            ("RECLAIMPOLICY", "Delete"),
            ("VOLUMEBINDINGMODE", "WaitForFirstConsumer"),
            ("ALLOWVOLUMEEXPANSION", "false"),
        ],
    );
    check(
        "priorityclass.scheduling.k8s.io",
        &["NAME", "VALUE", "GLOBAL-DEFAULT", "AGE", "PREEMPTIONPOLICY"],
        "print-high",
        &[
            ("VALUE", "1000"),
            ("GLOBAL-DEFAULT", "false"),
            ("PREEMPTIONPOLICY", "Never"),
        ],
    );
    check(
        "ingressclass.networking.k8s.io",
        &["NAME", "CONTROLLER", "PARAMETERS", "AGE"],
        "nginx",
        &[
            ("CONTROLLER", "k8s.io/ingress-nginx"),
            ("PARAMETERS", "<none>"),
        ],
    );
    check(
        "clusterrolebinding.rbac.authorization.k8s.io",
        &["NAME", "ROLE", "AGE"],
        "print-view",
        &[("ROLE", "ClusterRole/view")],
    );
    // Kinds without an upstream printer: the generic NAME and CREATED AT (RFC 3339).
    for (kind, name) in [
        ("role.rbac.authorization.k8s.io", "reader"),
        ("limitrange", "limits"),
    ] {
        let table = &t[kind];
        assert_eq!(table.header, ["NAME", "CREATED AT"], "{out}");
        let created = table.row(&format!("{kind}/{name}"))["CREATED AT"].to_string();
        assert!(
            created.len() == 20 && created.ends_with('Z') && created.contains('T'),
            "{created}"
        );
    }

    // -o wide adds the priority-1 columns.
    let wide = tables(&s.kubectl(&[
        "get",
        "-n",
        "print",
        "job/once",
        "rolebinding/read",
        "-o",
        "wide",
    ]));
    let job = &wide["job.batch"];
    assert_eq!(
        job.header,
        [
            "NAME",
            "STATUS",
            "COMPLETIONS",
            "DURATION",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ]
    );
    let row = job.row("job.batch/once");
    assert_eq!((row["CONTAINERS"], row["IMAGES"]), ("work", "busybox:1.36"));
    let rb = &wide["rolebinding.rbac.authorization.k8s.io"];
    assert_eq!(
        rb.header,
        ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"]
    );
    let row = rb.row("rolebinding.rbac.authorization.k8s.io/read");
    assert_eq!(
        (row["USERS"], row["GROUPS"], row["SERVICEACCOUNTS"]),
        ("alice", "", "print/builder")
    );

    // Events print alike through both APIs (events.k8s.io ones from their core form).
    for resource in ["events", "events.v1.events.k8s.io"] {
        let out = s.kubectl(&["get", resource, "-n", "print"]);
        let mut lines = out.lines();
        let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
        assert_eq!(
            header,
            ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
            "{out}"
        );
        let row = lines.next().expect("row");
        assert!(
            row.contains("Normal")
                && row.contains("SawCompletedJob")
                && row.contains("cronjob/tick")
                && row.ends_with("Saw completed job"),
            "{resource}: {out}"
        );
    }
}
