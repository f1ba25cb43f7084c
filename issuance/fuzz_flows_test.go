package issuance_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tallyauth/tally/issuance"
)

// FuzzNormalizeUserCode: anything typed either normalizes to 8 characters
// of the RFC 8628 alphabet, or is refused; never a panic.
func FuzzNormalizeUserCode(f *testing.F) {
	for _, s := range []string{"BCDF-GHJK", "bcdf ghjk", "", "----", "ÄÖÜ", "BCDFGHJKBCDFGHJK"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, ok := issuance.NormalizeUserCode(in)
		if !ok {
			return
		}
		if len(out) != 8 || strings.Trim(out, "BCDFGHJKLMNPQRSTVWXZ") != "" {
			t.Fatalf("NormalizeUserCode(%q) = %q", in, out)
		}
		if again, ok := issuance.NormalizeUserCode(out); !ok || again != out {
			t.Fatalf("not idempotent: %q → %q", out, again)
		}
	})
}

// FuzzAuthorizeRequest: any query string at the authorization endpoint is
// answered with a page (4xx or 200) or a redirect, never a 5xx or a panic.
func FuzzAuthorizeRequest(f *testing.F) {
	e, _ := newFlowTestEnv(f)
	h := e.srv.Handler()
	for _, s := range []string{
		"client_id=pub&response_type=code&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256&scope=openid&state=x",
		"client_id=pub&response_type=token", "client_id=pub&prompt=none+login", "%zz", "client_id=pub&max_age=-5",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		req := httptest.NewRequest(http.MethodGet, "/t/t/oauth2/authorize", nil)
		req.URL.RawQuery = q
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code >= 500 {
			t.Fatalf("query %q: %d %s", q, w.Code, w.Body)
		}
	})
}

// FuzzParseRefreshToken: a presented refresh token is accepted only with a
// valid MAC, so no input but our own tokens names a family; never a panic.
func FuzzParseRefreshToken(f *testing.F) {
	e, _ := newFlowTestEnv(f)
	tok, err := e.srv.NewRefreshTokenForTest("t", "AAAAAAAAAAAAAAAAAAAAAA", 3)
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{tok, "tlyr1.", "tlyr1.a.1.b.c", tok + ".", strings.Replace(tok, ".3.", ".4.", 1)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		fam, gen, ok := e.srv.ParseRefreshTokenForTest("t", in)
		if ok && in != tok {
			t.Fatalf("forged token %q accepted as %s/%d", in, fam, gen)
		}
	})
}
