package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestReferenceConfigIsTheDefault(t *testing.T) {
	c := Default()
	if err := c.LoadFile("ward.reference.yaml"); err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.DeviceNames = []string{}
	want.AdminTLS.Names = []string{}
	want.Access.WebAuthn.Origins = []string{}
	want.Access.OIDC.RoleMap = map[string][]string{}
	want.Access.OIDC.SiteMap = map[string][]string{}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("reference config differs from defaults:\n got %+v\nwant %+v", c, want)
	}
}

func TestUnknownKeyIsAnError(t *testing.T) {
	p := filepath.Join(t.TempDir(), "w.yaml")
	os.WriteFile(p, []byte("data: /x\nenrol:\n  retry_after: 5s\n"), 0o600)
	c := Default()
	err := c.LoadFile(p)
	if err == nil || !strings.Contains(err.Error(), "enrol") {
		t.Fatalf("err = %v, want it to name the unknown key", err)
	}
}

func TestPrecedence(t *testing.T) {
	p := filepath.Join(t.TempDir(), "w.yaml")
	os.WriteFile(p, []byte("device_addr: ':9443'\nadmin_addr: '127.0.0.1:9090'\nca:\n  cert_lifetime: 24h\n"), 0o600)
	c := Default()
	if err := c.LoadFile(p); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"WARD_ADMIN_ADDR": "127.0.0.1:9191", "WARD_DEVICE_NAMES": "ward.example, 10.0.0.5"}
	if err := c.LoadEnv(func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.DeviceAddr != ":9443" || c.AdminAddr != "127.0.0.1:9191" || time.Duration(c.CA.CertLifetime) != 24*time.Hour {
		t.Fatalf("precedence wrong: %+v", c)
	}
	if !reflect.DeepEqual(c.DeviceNames, []string{"ward.example", "10.0.0.5"}) {
		t.Fatalf("device names = %v", c.DeviceNames)
	}
	if !filepath.IsAbs(c.Data) {
		t.Fatalf("data dir not made absolute: %s", c.Data)
	}
}

func TestValidateRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		mut  func(*Config)
		want string
	}{
		{"admin cert without key", func(c *Config) { c.AdminTLS.CertFile = "a.pem" }, "admin_tls"},
		{"bad store", func(c *Config) { c.Store = "mysql://x" }, "store"},
		{"bad bus", func(c *Config) { c.Bus = "redis://x" }, "bus"},
		{"bad addr", func(c *Config) { c.DeviceAddr = "8443" }, "device_addr"},
		{"short lifetime", func(c *Config) { c.CA.CertLifetime = Duration(time.Second) }, "cert_lifetime"},
		{"log format", func(c *Config) { c.Log.Format = "xml" }, "log.format"},
		{"log level", func(c *Config) { c.Log.Level = "loud" }, "log.level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.mut(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want mention of %q", err, tc.want)
			}
		})
	}
}

func TestAdminOffLoopbackServesTLS(t *testing.T) {
	c := Default()
	c.AdminAddr = "0.0.0.0:8080"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if !c.AdminTLS.Enabled || c.AdminScheme() != "https" || len(c.AdminTLS.Names) == 0 {
		t.Fatalf("admin listener off loopback without TLS: %+v", c.AdminTLS)
	}
	c = Default()
	if err := c.Validate(); err != nil || c.AdminTLS.Enabled {
		t.Fatalf("loopback default: %+v %v", c.AdminTLS, err)
	}
}
