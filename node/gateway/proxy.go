package gateway

import (
	"net/http"
	"net/netip"
	"strings"
)

type netipPrefix = netip.Prefix

// ParseTrusted parses trusted proxy networks (CIDRs or addresses).
func ParseTrusted(specs []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range specs {
		if !strings.Contains(s, "/") {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, err
			}
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, err
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// DefaultTrusted trusts a gateway on loopback.
var DefaultTrusted = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

func isTrusted(r *http.Request, trusted []netip.Prefix) bool {
	a, err := netip.ParseAddr(hostIP(r.RemoteAddr))
	if err != nil {
		return false
	}
	a = a.Unmap()
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientIP is the original client's address: from X-Real-IP or the last
// X-Forwarded-For entry when the peer is a trusted proxy, else the peer.
func clientIP(r *http.Request, trusted []netip.Prefix) string {
	if isTrusted(r, trusted) {
		if v := strings.TrimSpace(r.Header.Get("X-Real-IP")); v != "" {
			return v
		}
		if v := r.Header.Get("X-Forwarded-For"); v != "" {
			parts := strings.Split(v, ",")
			return strings.TrimSpace(parts[len(parts)-1])
		}
	}
	return hostIP(r.RemoteAddr)
}

// device is the posture a trusted proxy or device agent asserted in
// X-Device-* headers (lower-cased names without the prefix).
func device(r *http.Request, trusted []netip.Prefix) map[string]string {
	if !isTrusted(r, trusted) {
		return nil
	}
	var m map[string]string
	for k, v := range r.Header {
		if rest, ok := strings.CutPrefix(k, "X-Device-"); ok && len(v) == 1 && len(m) < 16 {
			if m == nil {
				m = map[string]string{}
			}
			m[strings.ToLower(rest)] = v[0]
		}
	}
	return m
}
