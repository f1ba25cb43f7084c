package main

import (
	"flag"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/tallyauth/tally/issuance"
)

// threatFlags registers the rate-limit flags of tally serve (issue 13;
// issuance/ratelimit.go). Budgets are requests per minute, shared by the
// nodes of a cluster.
func threatFlags(fs *flag.FlagSet, c *issuance.RateLimits) {
	fs.Func("trusted-proxies", "comma-separated `CIDRs` of reverse proxies whose X-Forwarded-For gives the client address (default: none; the peer address is the client's)", func(s string) error {
		c.TrustedProxies = nil
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p == "" {
				continue
			}
			if !strings.Contains(p, "/") {
				a, err := netip.ParseAddr(p)
				if err != nil {
					return err
				}
				p = netip.PrefixFrom(a, a.BitLen()).String()
			}
			pf, err := netip.ParsePrefix(p)
			if err != nil {
				return err
			}
			c.TrustedProxies = append(c.TrustedProxies, pf.Masked())
		}
		return nil
	})
	fs.Func("rate-limits", "on (default) or off: the rate limits of the public endpoints", func(s string) error {
		switch s {
		case "on":
			c.Off = false
		case "off":
			c.Off = true
		default:
			return fmt.Errorf("want on or off")
		}
		return nil
	})
	d := issuance.DefaultRateLimits()
	fs.IntVar(&c.PerClient, "rate-limit-client", d.PerClient, "requests per minute per client (-1: unlimited)")
	fs.IntVar(&c.PerIP, "rate-limit-ip", d.PerIP, "requests per minute per client address (IPv6: per /64)")
	fs.IntVar(&c.PerSubnet, "rate-limit-subnet", d.PerSubnet, "requests per minute per IPv4 /24 or IPv6 /48")
	fs.IntVar(&c.PerTenant, "rate-limit-tenant", d.PerTenant, "requests per minute per tenant")
	fs.IntVar(&c.PerUsername, "rate-limit-username", d.PerUsername, "sign-in posts per minute per username")
	fs.IntVar(&c.PerUnknownClient, "rate-limit-unknown-client", d.PerUnknownClient, "requests per minute per address that name a client the tenant does not know")
	fs.IntVar(&c.AlertFailures, "alert-failures", d.AlertFailures, "failed sign-ins and client authentications per minute and tenant that raise a credential_stuffing alert and tighten the per-address failure budgets")
	fs.IntVar(&c.AlertIntrospectMisses, "alert-introspect-misses", d.AlertIntrospectMisses, "introspections of non-tokens per minute and client that raise a token_guessing alert")
	fs.IntVar(&c.AlertUserCodeMisses, "alert-user-code-misses", d.AlertUserCodeMisses, "device user codes matching nothing per minute and tenant that raise a user_code_guessing alert")
	fs.Func("tenant-rate-limits", "per-tenant budgets, comma-separated `TENANT.KEY=N` (KEY: client, ip, subnet, tenant, username, unknown-client, alert-failures, alert-introspect-misses, alert-user-code-misses; per minute, -1 off; and alert-travel-window, a duration, negative off; repeatable); unset keys take the flags above", func(s string) error {
		return parseTenantRateLimits(s, c)
	})
}

// parseTenantRateLimits adds "acme.client=6000,acme.username=10" to
// c.Tenants ("acme.alert-travel-window=30m" sets the tenant's
// impossible-travel window, a duration; it is not filled from the flags:
// 0 means the node's --alert-travel-window when the rotation is proposed). A tenant's unset budgets are filled from the global flags
// when tally serve starts (tenantRateLimitDefaults).
func parseTenantRateLimits(s string, c *issuance.RateLimits) error {
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		kv, val, ok := strings.Cut(item, "=")
		tenant, key, ok2 := strings.Cut(kv, ".")
		if !ok || !ok2 || tenant == "" {
			return fmt.Errorf("%q: want TENANT.KEY=N", item)
		}
		if key == "alert-travel-window" {
			// A duration, not a rate: the tenant's impossible-travel
			// window (0 or unset: --alert-travel-window; negative: off).
			w, err := time.ParseDuration(strings.TrimSpace(val))
			if err != nil {
				return fmt.Errorf("%q: want a duration such as 30m, or -1s to turn it off", item)
			}
			if c.Tenants == nil {
				c.Tenants = map[string]issuance.RateLimits{}
			}
			t := c.Tenants[tenant]
			t.AlertTravelWindow = w
			c.Tenants[tenant] = t
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(val))
		if err != nil || n < -1 || n == 0 {
			return fmt.Errorf("%q: want a positive number of requests per minute, or -1", item)
		}
		if c.Tenants == nil {
			c.Tenants = map[string]issuance.RateLimits{}
		}
		t := c.Tenants[tenant]
		f := tenantRateLimitField(&t, key)
		if f == nil {
			return fmt.Errorf("%q: unknown key %q", item, key)
		}
		*f = n
		c.Tenants[tenant] = t
	}
	return nil
}

func tenantRateLimitField(t *issuance.RateLimits, key string) *int {
	switch key {
	case "client":
		return &t.PerClient
	case "ip":
		return &t.PerIP
	case "subnet":
		return &t.PerSubnet
	case "tenant":
		return &t.PerTenant
	case "username":
		return &t.PerUsername
	case "unknown-client":
		return &t.PerUnknownClient
	case "alert-failures":
		return &t.AlertFailures
	case "alert-introspect-misses":
		return &t.AlertIntrospectMisses
	case "alert-user-code-misses":
		return &t.AlertUserCodeMisses
	}
	return nil
}

// tenantRateLimitDefaults fills each tenant override's unset budgets from
// the global ones (the flags), so that an override changes only what it
// names.
func tenantRateLimitDefaults(c *issuance.RateLimits) {
	for name, t := range c.Tenants {
		for _, key := range []string{"client", "ip", "subnet", "tenant", "username", "unknown-client", "alert-failures", "alert-introspect-misses", "alert-user-code-misses"} {
			if f := tenantRateLimitField(&t, key); *f == 0 {
				*f = *tenantRateLimitField(c, key)
			}
		}
		c.Tenants[name] = t
	}
}
