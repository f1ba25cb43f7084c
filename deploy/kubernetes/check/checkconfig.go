package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// checkConfig runs `tally serve --check-config` once per pod of s, with the
// pod's arguments and environment as the kubelet would give them (downward
// API values, $(VAR) expansion), every mounted path moved under a temporary
// root, and the mounted secrets replaced by generated stand-ins: a random
// KEK and admin credential, and node certificates of a throwaway CA issued
// for each pod's name and DNS name. So it checks that tally accepts every
// flag and variable, that the secret keys are the files tally reads, and
// that each pod finds its own certificate.
func checkConfig(s *appsv1.StatefulSet, tally string) []error {
	c := tallyContainer(s)
	if c == nil {
		return nil
	}
	if len(c.Command) > 0 || len(c.Args) == 0 || c.Args[0] != "serve" {
		return []error{fmt.Errorf("StatefulSet/%s: the container must run the image's entrypoint (tally) with args starting with serve", s.Name)}
	}
	root, err := os.MkdirTemp("", "tally-k8s-check-")
	if err != nil {
		return []error{err}
	}
	defer os.RemoveAll(root)
	ca := filepath.Join(root, "ca")
	if out, err := exec.Command(tally, "admin", "cluster", "ca", "init", "--out", ca).CombinedOutput(); err != nil {
		return []error{fmt.Errorf("tally admin cluster ca init: %v: %s", err, out)}
	}
	var errs []error
	for i := range *s.Spec.Replicas {
		pod := fmt.Sprintf("%s-%d", s.Name, i)
		if err := checkPod(s, c, pod, filepath.Join(root, pod), ca, tally); err != nil {
			errs = append(errs, fmt.Errorf("pod %s: %w", pod, err))
		}
	}
	return errs
}

func checkPod(s *appsv1.StatefulSet, c *corev1.Container, pod, root, ca, tally string) error {
	env, order, err := podEnv(s, c, pod)
	if err != nil {
		return err
	}
	mounts, err := mountVolumes(s, c, env, root, ca, tally)
	if err != nil {
		return err
	}
	var pairs []string // longest mount path first: one pass, no overlaps
	for _, m := range mounts {
		pairs = append(pairs, m.MountPath, filepath.Join(root, m.MountPath))
	}
	relocate := strings.NewReplacer(pairs...).Replace
	args := []string{"serve", "--check-config"}
	for _, a := range c.Args[1:] {
		args = append(args, relocate(expand(a, env)))
	}
	cmd := exec.Command(tally, args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + root}
	for _, k := range order {
		cmd.Env = append(cmd.Env, k+"="+relocate(env[k]))
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		msg, _, _ := strings.Cut(strings.TrimSpace(out.String()), "\nUsage:")
		return fmt.Errorf("tally serve --check-config: %v: %s", err, msg)
	}
	if strings.Contains(out.String(), "warning:") {
		return fmt.Errorf("tally serve --check-config: %s", strings.TrimSpace(out.String()))
	}
	return nil
}

// podEnv is the environment the kubelet builds for c in pod (values,
// $(VAR) expansion, field references), and its names in order.
func podEnv(s *appsv1.StatefulSet, c *corev1.Container, pod string) (map[string]string, []string, error) {
	env := map[string]string{}
	var order []string
	for _, e := range c.Env {
		v := e.Value
		switch {
		case e.ValueFrom == nil:
			v = expand(v, env)
		case e.ValueFrom.FieldRef != nil:
			switch e.ValueFrom.FieldRef.FieldPath {
			case "metadata.name":
				v = pod
			case "metadata.namespace":
				v = s.Namespace
			case "status.podIP":
				v = "10.0.0.10"
			default:
				return nil, nil, fmt.Errorf("env %s: field %s is not simulated", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
		default:
			return nil, nil, fmt.Errorf("env %s: only values and field references are simulated", e.Name)
		}
		if _, dup := env[e.Name]; !dup {
			order = append(order, e.Name)
		}
		env[e.Name] = v
	}
	if len(c.EnvFrom) > 0 {
		return nil, nil, fmt.Errorf("envFrom is not simulated")
	}
	return env, order, nil
}

// mountVolumes makes each mount of c a directory under root, filled like
// the volume (secrets; claim templates and emptyDirs stay empty), and
// returns the mounts, longest mount path first.
func mountVolumes(s *appsv1.StatefulSet, c *corev1.Container, env map[string]string, root, ca, tally string) ([]corev1.VolumeMount, error) {
	vols := map[string]corev1.Volume{}
	for _, v := range s.Spec.Template.Spec.Volumes {
		vols[v.Name] = v
	}
	mounts := make([]corev1.VolumeMount, len(c.VolumeMounts))
	copy(mounts, c.VolumeMounts)
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].MountPath) > len(mounts[j].MountPath) })
	for _, m := range mounts {
		dir := filepath.Join(root, m.MountPath)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		v, ok := vols[m.Name]
		if !ok || v.Secret == nil {
			continue // claim template or emptyDir: an empty directory
		}
		sub := m.SubPath
		if m.SubPathExpr != "" {
			sub = expand(m.SubPathExpr, env)
		}
		if err := fillSecret(v.Secret, sub, dir, s, ca, tally); err != nil {
			return nil, fmt.Errorf("volume %s: %w", m.Name, err)
		}
	}
	return mounts, nil
}

// expand is the kubelet's $(VAR) expansion: a defined variable is
// replaced, $$ is a literal $, anything else stays as written.
func expand(s string, env map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
			continue
		case '(':
			if j := strings.IndexByte(s[i:], ')'); j > 0 {
				if v, ok := env[s[i+2:i+j]]; ok {
					b.WriteString(v)
					i += j
					continue
				}
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// fillSecret writes stand-ins for the secret's items (those under sub, when
// the mount has a subPath) into dir. It knows tally's secret keys: kek,
// admin-token, ca.pem, <pod>.pem and <pod>-key.pem; any other key is an
// error, so a renamed key cannot go unnoticed.
func fillSecret(sv *corev1.SecretVolumeSource, sub, dir string, s *appsv1.StatefulSet, ca, tally string) error {
	if len(sv.Items) == 0 {
		return fmt.Errorf("secret %s: list its items, so the checker knows the files", sv.SecretName)
	}
	certs := map[string]string{} // pod → directory with its issued certificate
	for _, it := range sv.Items {
		path := it.Path
		if sub != "" {
			rel, ok := strings.CutPrefix(path, sub+"/")
			if !ok {
				continue
			}
			path = rel
		}
		var data []byte
		switch {
		case it.Key == "kek":
			k := make([]byte, 32)
			rand.Read(k)
			data = []byte(base64.StdEncoding.EncodeToString(k) + "\n")
		case it.Key == "admin-token":
			k := make([]byte, 24)
			rand.Read(k)
			data = []byte(base64.RawURLEncoding.EncodeToString(k) + "\n")
		case it.Key == "ca.pem":
			b, err := os.ReadFile(filepath.Join(ca, "ca.pem"))
			if err != nil {
				return err
			}
			data = b
		case strings.HasSuffix(it.Key, ".pem"):
			owner, file := strings.TrimSuffix(it.Key, ".pem"), "node.pem"
			if o, ok := strings.CutSuffix(owner, "-key"); ok {
				owner, file = o, "node-key.pem"
			}
			if !strings.HasPrefix(owner, s.Name+"-") {
				return fmt.Errorf("secret %s: key %s names no pod of StatefulSet/%s", sv.SecretName, it.Key, s.Name)
			}
			cd, ok := certs[owner]
			if !ok {
				cd = filepath.Join(filepath.Dir(dir), "issued-"+owner)
				dns := fmt.Sprintf("%s.%s.%s.svc.cluster.local", owner, s.Spec.ServiceName, s.Namespace)
				out, err := exec.Command(tally, "admin", "cluster", "node-cert", "--ca", ca, "--node-id", owner, "--dns", dns, "--out", cd).CombinedOutput()
				if err != nil {
					return fmt.Errorf("tally admin cluster node-cert: %v: %s", err, out)
				}
				certs[owner] = cd
			}
			b, err := os.ReadFile(filepath.Join(cd, file))
			if err != nil {
				return err
			}
			data = b
		default:
			return fmt.Errorf("secret %s: key %q is not one tally reads (kek, admin-token, ca.pem, <pod>.pem, <pod>-key.pem)", sv.SecretName, it.Key)
		}
		dst := filepath.Join(dir, path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(dst, data, 0o400); err != nil {
			return err
		}
	}
	return nil
}
