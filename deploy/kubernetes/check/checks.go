package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
)

// problems collects every problem of a kustomization, not only the first.
type problems []string

func (p *problems) add(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

func (p problems) err() error {
	if len(p) == 0 {
		return nil
	}
	return errors.New("  - " + strings.Join(p, "\n  - "))
}

// checkAll checks the rendered objects of one kustomization (named rel) and
// runs tally serve --check-config for each pod of each StatefulSet.
func checkAll(objs []object, rel, tally string) error {
	var p problems
	var sts []*appsv1.StatefulSet
	services := map[string]*corev1.Service{}
	var pdbs []*policyv1.PodDisruptionBudget
	var netpols []*networkingv1.NetworkPolicy
	seen := map[string]bool{}
	for _, o := range objs {
		key := o.Kind + "/" + o.Namespace + "/" + o.Name
		if seen[key] {
			p.add("%s is defined twice", o)
		}
		seen[key] = true
		for _, msg := range validation.IsDNS1123Subdomain(o.Name) {
			p.add("%s: name: %s", o, msg)
		}
		if o.Kind != "Namespace" && o.Namespace == "" {
			p.add("%s has no namespace", o)
		}
		switch v := o.Value.(type) {
		case *appsv1.StatefulSet:
			sts = append(sts, v)
		case *corev1.Service:
			services[v.Name] = v
		case *policyv1.PodDisruptionBudget:
			pdbs = append(pdbs, v)
		case *networkingv1.NetworkPolicy:
			netpols = append(netpols, v)
		case *serviceMonitor:
			checkServiceMonitor(&p, v, objs)
		}
	}
	if len(sts) != 1 {
		p.add("want exactly one StatefulSet, have %d", len(sts))
		return p.err()
	}
	s := sts[0]
	checkStatefulSet(&p, s, services)
	checkServices(&p, s, services)
	checkPDB(&p, s, pdbs)
	checkNetworkPolicy(&p, s, netpols)
	if strings.Contains(rel, "zones") {
		checkZoneSpread(&p, s)
	}
	if len(p) == 0 {
		for _, err := range checkConfig(s, tally) {
			p.add("%v", err)
		}
	}
	return p.err()
}

func podLabels(s *appsv1.StatefulSet) labels.Set { return labels.Set(s.Spec.Template.Labels) }

func tallyContainer(s *appsv1.StatefulSet) *corev1.Container {
	for i := range s.Spec.Template.Spec.Containers {
		if s.Spec.Template.Spec.Containers[i].Name == "tally" {
			return &s.Spec.Template.Spec.Containers[i]
		}
	}
	return nil
}

func containerPort(c *corev1.Container, p intstr.IntOrString) (corev1.ContainerPort, bool) {
	for _, cp := range c.Ports {
		if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
			return cp, true
		}
	}
	return corev1.ContainerPort{}, false
}

func checkStatefulSet(p *problems, s *appsv1.StatefulSet, services map[string]*corev1.Service) {
	name := "StatefulSet/" + s.Name
	if s.Spec.Replicas == nil || *s.Spec.Replicas < 3 || *s.Spec.Replicas%2 == 0 {
		p.add("%s: replicas must be an odd number of at least 3 (voters)", name)
	}
	if s.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		p.add("%s: podManagementPolicy must be Parallel (no pod is ready before a quorum is up)", name)
	}
	if s.Spec.Selector == nil {
		p.add("%s: no selector", name)
	} else if sel, err := metav1.LabelSelectorAsSelector(s.Spec.Selector); err != nil || !sel.Matches(podLabels(s)) {
		p.add("%s: the selector does not match the pod template's labels", name)
	}
	hs := services[s.Spec.ServiceName]
	switch {
	case hs == nil:
		p.add("%s: serviceName %q is not a Service of this kustomization", name, s.Spec.ServiceName)
	case hs.Spec.ClusterIP != corev1.ClusterIPNone:
		p.add("%s: serviceName %q is not headless", name, s.Spec.ServiceName)
	case !hs.Spec.PublishNotReadyAddresses:
		p.add("Service/%s: publishNotReadyAddresses must be true (peers must resolve each other before a leader exists)", hs.Name)
	}
	checkPodSecurity(p, name, s.Spec.Template.Spec)
	c := tallyContainer(s)
	if c == nil {
		p.add("%s: no container named tally", name)
		return
	}
	checkTallyContainer(p, name, s, c)
	checkVolumes(p, name, s, c)
	checkArgsAndEnv(p, name, c)
}

// checkPodSecurity checks the pod template's service account token,
// service links and security context.
func checkPodSecurity(p *problems, name string, ps corev1.PodSpec) {
	if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
		p.add("%s: automountServiceAccountToken must be false", name)
	}
	if ps.EnableServiceLinks == nil || *ps.EnableServiceLinks {
		p.add("%s: enableServiceLinks must be false (service links put TALLY_* variables into the environment)", name)
	}
	sc := ps.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 {
		p.add("%s: the pod must run as a non-root user", name)
	}
	if sc == nil || sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		p.add("%s: the pod's seccomp profile must be RuntimeDefault", name)
	}
}

// checkTallyContainer checks the tally container's security context,
// probes, ports, resources and the pod's scrape annotations.
func checkTallyContainer(p *problems, name string, s *appsv1.StatefulSet, c *corev1.Container) {
	csc := c.SecurityContext
	if csc == nil || csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem {
		p.add("%s: readOnlyRootFilesystem must be true", name)
	}
	if csc == nil || csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation {
		p.add("%s: allowPrivilegeEscalation must be false", name)
	}
	if csc == nil || csc.Capabilities == nil || len(csc.Capabilities.Drop) != 1 || csc.Capabilities.Drop[0] != "ALL" || len(csc.Capabilities.Add) > 0 {
		p.add("%s: capabilities must drop ALL and add none", name)
	}
	probe := func(kind string, pr *corev1.Probe, path string) {
		if pr == nil || pr.HTTPGet == nil {
			p.add("%s: %s probe must be an HTTP GET of %s", name, kind, path)
			return
		}
		if pr.HTTPGet.Path != path {
			p.add("%s: %s probe path %q, want %s", name, kind, pr.HTTPGet.Path, path)
		}
		if cp, ok := containerPort(c, pr.HTTPGet.Port); !ok || cp.Name != "http" {
			p.add("%s: %s probe port %s is not the http container port", name, kind, pr.HTTPGet.Port.String())
		}
	}
	probe("readiness", c.ReadinessProbe, "/readyz")
	probe("liveness", c.LivenessProbe, "/healthz")
	for _, want := range []string{"http", "cluster", "nats", "nats-route", "metrics"} {
		if _, ok := containerPort(c, intstr.FromString(want)); !ok {
			p.add("%s: no container port named %s", name, want)
		}
	}
	if c.Resources.Requests == nil || c.Resources.Limits.Memory().IsZero() {
		p.add("%s: set resource requests and a memory limit", name)
	}
	// Prometheus scrape annotations point at the metrics port.
	ann := s.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" {
		p.add("%s: pod annotation prometheus.io/scrape must be \"true\"", name)
	}
	if port, err := strconv.Atoi(ann["prometheus.io/port"]); err != nil {
		p.add("%s: pod annotation prometheus.io/port must be a port number", name)
	} else if cp, ok := containerPort(c, intstr.FromInt32(int32(port))); !ok || cp.Name != "metrics" {
		p.add("%s: prometheus.io/port %d is not the metrics container port", name, port)
	}
}

// checkVolumes: every mount has a volume or a claim template, and every
// claim template is mounted and requests storage.
func checkVolumes(p *problems, name string, s *appsv1.StatefulSet, c *corev1.Container) {
	vols := map[string]bool{}
	for _, v := range s.Spec.Template.Spec.Volumes {
		vols[v.Name] = true
	}
	for _, t := range s.Spec.VolumeClaimTemplates {
		vols[t.Name] = true
	}
	mounted := map[string]bool{}
	for _, m := range c.VolumeMounts {
		mounted[m.Name] = true
		if !vols[m.Name] {
			p.add("%s: volume mount %q has no volume", name, m.Name)
		}
	}
	if len(s.Spec.VolumeClaimTemplates) == 0 {
		p.add("%s: the data directory needs a volumeClaimTemplate", name)
	}
	for _, t := range s.Spec.VolumeClaimTemplates {
		if !mounted[t.Name] {
			p.add("%s: volumeClaimTemplate %q is not mounted", name, t.Name)
		}
		if t.Spec.Resources.Requests.Storage().IsZero() {
			p.add("%s: volumeClaimTemplate %q requests no storage", name, t.Name)
		}
	}
}

// checkArgsAndEnv: exactly one of --peers and --join, and the node id
// from the pod name.
func checkArgsAndEnv(p *problems, name string, c *corev1.Container) {
	peers, join := 0, 0
	for _, a := range c.Args {
		switch {
		case strings.HasPrefix(a, "--peers=") || a == "--peers":
			peers++
		case strings.HasPrefix(a, "--join=") || a == "--join":
			join++
		}
	}
	if peers+join != 1 {
		p.add("%s: give exactly one of --peers (a new cluster) and --join (an existing one)", name)
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	if e, ok := env["TALLY_NODE_ID"]; !ok || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.name" {
		p.add("%s: TALLY_NODE_ID must come from the pod name (downward API metadata.name)", name)
	}
}

func checkServices(p *problems, s *appsv1.StatefulSet, services map[string]*corev1.Service) {
	c := tallyContainer(s)
	if c == nil {
		return
	}
	clientFacing := 0
	for _, svc := range services {
		name := "Service/" + svc.Name
		if len(svc.Spec.Selector) == 0 {
			p.add("%s: no selector", name)
			continue
		}
		if !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels(s)) {
			p.add("%s: the selector does not select the tally pods", name)
		}
		for _, sp := range svc.Spec.Ports {
			if _, ok := containerPort(c, sp.TargetPort); !ok {
				p.add("%s: port %s targets %s, which is no container port", name, sp.Name, sp.TargetPort.String())
			}
		}
		if svc.Spec.ClusterIP != corev1.ClusterIPNone {
			clientFacing++
			if svc.Spec.PublishNotReadyAddresses {
				p.add("%s: a client-facing service must not publish not-ready (stale) pods", name)
			}
		}
	}
	if clientFacing == 0 {
		p.add("no client-facing Service")
	}
}

func checkPDB(p *problems, s *appsv1.StatefulSet, pdbs []*policyv1.PodDisruptionBudget) {
	for _, b := range pdbs {
		sel, err := metav1.LabelSelectorAsSelector(b.Spec.Selector)
		if err != nil || !sel.Matches(podLabels(s)) {
			continue
		}
		if b.Spec.MaxUnavailable == nil || b.Spec.MaxUnavailable.String() != "1" || b.Spec.MinAvailable != nil {
			p.add("PodDisruptionBudget/%s: want maxUnavailable 1 (a quorum stays up)", b.Name)
		}
		return
	}
	p.add("no PodDisruptionBudget selects the tally pods")
}

// checkNetworkPolicy: an ingress policy selects the tally pods, and the
// cluster and NATS route ports are reachable only from tally pods.
func checkNetworkPolicy(p *problems, s *appsv1.StatefulSet, nps []*networkingv1.NetworkPolicy) {
	c := tallyContainer(s)
	if c == nil {
		return
	}
	internal := map[int32]bool{}
	for _, n := range []string{"cluster", "nats-route"} {
		if cp, ok := containerPort(c, intstr.FromString(n)); ok {
			internal[cp.ContainerPort] = true
		}
	}
	isInternal := func(pp networkingv1.NetworkPolicyPort) bool {
		if pp.Port == nil {
			return true // all ports
		}
		cp, ok := containerPort(c, *pp.Port)
		return ok && internal[cp.ContainerPort]
	}
	selected := false
	for _, np := range nps {
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil || !sel.Matches(podLabels(s)) {
			continue
		}
		ingress := len(np.Spec.PolicyTypes) == 0
		for _, t := range np.Spec.PolicyTypes {
			ingress = ingress || t == networkingv1.PolicyTypeIngress
		}
		if !ingress {
			continue
		}
		selected = true
		for i, r := range np.Spec.Ingress {
			opensInternal := len(r.Ports) == 0
			for _, pp := range r.Ports {
				opensInternal = opensInternal || isInternal(pp)
				if pp.Port != nil {
					if _, ok := containerPort(c, *pp.Port); !ok {
						p.add("NetworkPolicy/%s: rule %d names port %s, which is no container port", np.Name, i, pp.Port.String())
					}
				}
			}
			if !opensInternal {
				continue
			}
			if len(r.From) == 0 {
				p.add("NetworkPolicy/%s: rule %d opens the cluster port to everyone", np.Name, i)
			}
			for _, f := range r.From {
				if f.IPBlock != nil || f.NamespaceSelector != nil || f.PodSelector == nil {
					p.add("NetworkPolicy/%s: rule %d opens the cluster port beyond the tally pods", np.Name, i)
					continue
				}
				fs, err := metav1.LabelSelectorAsSelector(f.PodSelector)
				if err != nil || fs.Empty() || !fs.Matches(podLabels(s)) {
					p.add("NetworkPolicy/%s: rule %d: the cluster port's peers must be the tally pods", np.Name, i)
				}
			}
		}
	}
	if !selected {
		p.add("no ingress NetworkPolicy selects the tally pods")
	}
}

func checkZoneSpread(p *problems, s *appsv1.StatefulSet) {
	for _, t := range s.Spec.Template.Spec.TopologySpreadConstraints {
		if t.TopologyKey == "topology.kubernetes.io/zone" && t.MaxSkew == 1 && t.WhenUnsatisfiable == corev1.DoNotSchedule {
			sel, err := metav1.LabelSelectorAsSelector(t.LabelSelector)
			if err == nil && sel.Matches(podLabels(s)) {
				return
			}
		}
	}
	p.add("StatefulSet/%s: a zone overlay must spread the pods over zones (topology.kubernetes.io/zone, maxSkew 1, DoNotSchedule)", s.Name)
}

func checkServiceMonitor(p *problems, sm *serviceMonitor, objs []object) {
	sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil || sel.Empty() {
		p.add("ServiceMonitor/%s: bad or empty selector", sm.Name)
		return
	}
	for _, o := range objs {
		svc, ok := o.Value.(*corev1.Service)
		if !ok || !sel.Matches(labels.Set(svc.Labels)) {
			continue
		}
		for _, e := range sm.Spec.Endpoints {
			found := false
			for _, sp := range svc.Spec.Ports {
				found = found || sp.Name == e.Port
			}
			if !found {
				p.add("ServiceMonitor/%s: Service/%s has no port %q", sm.Name, svc.Name, e.Port)
			}
		}
		return
	}
	p.add("ServiceMonitor/%s selects no Service", sm.Name)
}
