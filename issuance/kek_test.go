package issuance_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/tallyauth/tally/issuance"
)

func TestNewKEKLength(t *testing.T) {
	for _, n := range []int{0, 16, 31, 33, 64} {
		if _, err := issuance.NewKEK(make([]byte, n)); err == nil {
			t.Errorf("NewKEK(%d bytes) succeeded", n)
		}
	}
	if _, err := issuance.NewKEK(make([]byte, 32)); err != nil {
		t.Errorf("NewKEK(32 bytes): %v", err)
	}
}

func TestKEKSealOpen(t *testing.T) {
	k := newKEK(t)
	other := newKEK(t)
	pt := []byte("private key bytes")
	aad := []byte("tenant|kid|sig")
	ct, err := k.Seal(pt, aad)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(ct, pt) {
		t.Fatal("ciphertext contains the plaintext")
	}
	ct2, _ := k.Seal(pt, aad)
	if bytes.Equal(ct, ct2) {
		t.Fatal("two seals of the same plaintext are equal: nonce not random")
	}
	got, err := k.Open(ct, aad)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	flipped := bytes.Clone(ct)
	flipped[len(flipped)-1] ^= 1
	for name, tc := range map[string]struct {
		k   *issuance.KEK
		ct  []byte
		aad []byte
	}{
		"other aad":   {k, ct, []byte("tenant|kid|seal")},
		"other key":   {other, ct, aad},
		"tampered":    {k, flipped, aad},
		"truncated":   {k, ct[:len(ct)-1], aad},
		"too short":   {k, ct[:10], aad},
		"empty":       {k, nil, aad},
		"nil aad too": {k, ct, nil},
	} {
		if _, err := tc.k.Open(tc.ct, tc.aad); !errors.Is(err, issuance.ErrDecrypt) {
			t.Errorf("%s: Open err = %v, want ErrDecrypt", name, err)
		}
	}
}

func TestHashSecret(t *testing.T) {
	k := newKEK(t)
	h1 := k.HashSecret("s3cret")
	if len(h1) != 32 {
		t.Fatalf("hash is %d bytes", len(h1))
	}
	if !bytes.Equal(h1, k.HashSecret("s3cret")) {
		t.Fatal("hash is not deterministic")
	}
	if bytes.Equal(h1, k.HashSecret("s3creT")) {
		t.Fatal("different secrets hash equal")
	}
	if bytes.Equal(h1, newKEK(t).HashSecret("s3cret")) {
		t.Fatal("hash does not depend on the KEK")
	}
}

func TestVerifySecret(t *testing.T) {
	k := newKEK(t)
	now := time.Unix(1_800_000_000, 0)
	c := issuance.Client{Secrets: []issuance.SecretHash{
		{Hash: k.HashSecret("old"), ExpiresAt: now.Add(time.Minute)}, // rotating out
		{Hash: k.HashSecret("new")},
		{Hash: k.HashSecret("gone"), ExpiresAt: now},
	}}
	for _, tc := range []struct {
		secret string
		want   bool
	}{
		{"old", true},
		{"new", true},
		{"gone", false}, // expired exactly now
		{"wrong", false},
		{"", false},
	} {
		if got := k.VerifySecret(c, tc.secret, now); got != tc.want {
			t.Errorf("VerifySecret(%q) = %v, want %v", tc.secret, got, tc.want)
		}
	}
	if k.VerifySecret(c, "old", now.Add(time.Minute)) {
		t.Error("old secret still verifies after it expired")
	}
	if k.VerifySecret(issuance.Client{}, "", now) {
		t.Error("client without secrets verified")
	}
	if newKEK(t).VerifySecret(c, "new", now) {
		t.Error("secret verified under another KEK")
	}
}

func TestGenerateKey(t *testing.T) {
	kek := newKEK(t)
	created := time.Unix(1_800_000_000, 0)
	kidRE := regexp.MustCompile(`^[A-Za-z0-9_-]{22,}$`)
	for _, tc := range []struct {
		alg string
		use issuance.KeyUse
	}{
		{issuance.AlgES256, issuance.UseSign},
		{issuance.AlgEdDSA, issuance.UseSign},
		{issuance.AlgRS256, issuance.UseSign},
		{issuance.AlgA256GCM, issuance.UseSeal},
	} {
		t.Run(tc.alg, func(t *testing.T) {
			k, err := issuance.GenerateKey(kek, rand.Reader, "acme", tc.alg, tc.use, created, time.Time{})
			if err != nil {
				t.Fatal(err)
			}
			if !kidRE.MatchString(k.ID) {
				t.Errorf("kid %q is not ≥ 128 bits of base64url", k.ID)
			}
			if k.Tenant != "acme" || k.Alg != tc.alg || k.Use != tc.use || !k.NotBefore.Equal(created) {
				t.Errorf("key metadata %+v", k)
			}
			if !k.RetiredAt.IsZero() || !k.ExpiresAt.IsZero() {
				t.Errorf("new key is retired or expiring: %+v", k)
			}
			// The private part opens only with the right aad; checked via
			// a server in the token tests. Here: it is not the plaintext.
			if tc.use == issuance.UseSeal {
				if len(k.PublicKey) != 0 {
					t.Error("sealing key has a public key")
				}
				return
			}
			pub, err := x509.ParsePKIXPublicKey(k.PublicKey)
			if err != nil {
				t.Fatal(err)
			}
			switch p := pub.(type) {
			case *ecdsa.PublicKey:
				if tc.alg != issuance.AlgES256 || p.Curve.Params().Name != "P-256" {
					t.Errorf("alg %s got %T %s", tc.alg, p, p.Curve.Params().Name)
				}
			case ed25519.PublicKey:
				if tc.alg != issuance.AlgEdDSA {
					t.Errorf("alg %s got %T", tc.alg, p)
				}
			case *rsa.PublicKey:
				if tc.alg != issuance.AlgRS256 || p.N.BitLen() != issuance.RSABits {
					t.Errorf("alg %s got %T of %d bits", tc.alg, p, p.N.BitLen())
				}
			}
		})
	}

	nb := created.Add(time.Hour)
	k, err := issuance.GenerateKey(kek, rand.Reader, "acme", issuance.AlgEdDSA, issuance.UseSign, created, nb)
	if err != nil || !k.NotBefore.Equal(nb) {
		t.Errorf("explicit notBefore: %v, %v", k.NotBefore, err)
	}
	for name, f := range map[string]func() error{
		"seal alg for signing": func() error {
			_, err := issuance.GenerateKey(kek, rand.Reader, "acme", issuance.AlgA256GCM, issuance.UseSign, created, nb)
			return err
		},
		"sign alg for sealing": func() error {
			_, err := issuance.GenerateKey(kek, rand.Reader, "acme", issuance.AlgES256, issuance.UseSeal, created, nb)
			return err
		},
		"HS256": func() error {
			_, err := issuance.GenerateKey(kek, rand.Reader, "acme", "HS256", issuance.UseSign, created, nb)
			return err
		},
		"none": func() error {
			_, err := issuance.GenerateKey(kek, rand.Reader, "acme", "none", issuance.UseSign, created, nb)
			return err
		},
		"nil KEK": func() error {
			_, err := issuance.GenerateKey(nil, rand.Reader, "acme", issuance.AlgES256, issuance.UseSign, created, nb)
			return err
		},
		"empty tenant": func() error {
			_, err := issuance.GenerateKey(kek, rand.Reader, "", issuance.AlgES256, issuance.UseSign, created, nb)
			return err
		},
		"zero created": func() error {
			_, err := issuance.GenerateKey(kek, rand.Reader, "acme", issuance.AlgES256, issuance.UseSign, time.Time{}, nb)
			return err
		},
	} {
		if f() == nil {
			t.Errorf("%s: GenerateKey succeeded", name)
		}
	}
}

func TestGeneratedIDs(t *testing.T) {
	secretRE := regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)
	idRE := regexp.MustCompile(`^[a-z2-7]{26}$`)
	jtiRE := regexp.MustCompile(`^[A-Za-z0-9_-]{22}$`)
	seen := map[string]bool{}
	for range 100 {
		s, err := issuance.NewClientSecret(rand.Reader)
		if err != nil || !secretRE.MatchString(s) {
			t.Fatalf("NewClientSecret = %q, %v", s, err)
		}
		id, err := issuance.NewClientID(rand.Reader)
		if err != nil || !idRE.MatchString(id) {
			t.Fatalf("NewClientID = %q, %v", id, err)
		}
		j, err := issuance.NewJTI(rand.Reader)
		if err != nil || !jtiRE.MatchString(j) {
			t.Fatalf("NewJTI = %q, %v", j, err)
		}
		for _, v := range []string{s, id, j} {
			if seen[v] {
				t.Fatalf("duplicate %q", v)
			}
			seen[v] = true
		}
	}
	if _, err := issuance.NewClientSecret(bytes.NewReader(make([]byte, 5))); err == nil {
		t.Error("NewClientSecret with a short reader succeeded")
	}
}

func TestScope(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"read", true},
		{"a:b/c.d-e_f~!#$%&'()*+,;<=>?@[]^`{|}", true},
		{"", false},
		{"a b", false},
		{`a"b`, false},
		{`a\b`, false},
		{"é", false},
		{"a\tb", false},
		{"a\x7f", false},
	} {
		if got := issuance.ValidScopeToken(tc.in); got != tc.want {
			t.Errorf("ValidScopeToken(%q) = %v", tc.in, got)
		}
	}
	for _, tc := range []struct {
		in   string
		want []string
		err  bool
	}{
		{"", nil, false},
		{"read", []string{"read"}, false},
		{"read write", []string{"read", "write"}, false},
		{"write read write", []string{"write", "read"}, false},
		{"read  write", nil, true},
		{" read", nil, true},
		{"read ", nil, true},
		{"read\twrite", nil, true},
		{`re"ad`, nil, true},
		{" ", nil, true},
	} {
		got, err := issuance.ParseScope(tc.in)
		if (err != nil) != tc.err || !slices.Equal(got, tc.want) {
			t.Errorf("ParseScope(%q) = %q, %v", tc.in, got, err)
		}
		if err != nil && !errors.Is(err, issuance.ErrMalformedScope) {
			t.Errorf("ParseScope(%q) error %v is not ErrMalformedScope", tc.in, err)
		}
	}
}
