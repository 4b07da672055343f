package client

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"time"
)

// User is a person's account. It never holds a password or a TOTP seed.
type User struct {
	ID                  string     `json:"id"`
	Username            string     `json:"username"`
	DisplayName         string     `json:"display_name,omitempty"`
	Email               string     `json:"email,omitempty"`
	Roles               []string   `json:"roles"`
	Sites               []string   `json:"sites"`
	Disabled            bool       `json:"disabled"`
	TOTPEnabled         bool       `json:"totp_enabled"`
	WebAuthnCredentials int        `json:"webauthn_credentials"`
	External            string     `json:"external,omitempty"` // the OIDC issuer of an external account
	CreatedAt           time.Time  `json:"created_at"`
	LastLoginAt         *time.Time `json:"last_login_at,omitempty"`
	LockedUntil         *time.Time `json:"locked_until,omitempty"`
}

// UserRequest describes a local account to create.
type UserRequest struct {
	Username    string   `json:"username"`
	DisplayName string   `json:"display_name,omitempty"`
	Email       string   `json:"email,omitempty"`
	Password    string   `json:"password"` // 12 to 1024 characters
	Roles       []string `json:"roles"`
	Sites       []string `json:"sites,omitempty"`
}

func userPath(ref string, rest string) (string, error) {
	if ref == "" {
		return "", errors.New("ward client: empty user reference")
	}
	return "/api/v1/users/" + url.PathEscape(ref) + rest, nil
}

// Users lists people's accounts.
func (c *Client) Users(ctx context.Context) ([]User, error) {
	var out items[User]
	err := c.do(ctx, http.MethodGet, "/api/v1/users", nil, nil, &out)
	return out.Items, err
}

// User returns an account by id or username.
func (c *Client) User(ctx context.Context, ref string) (User, error) {
	p, err := userPath(ref, "")
	if err != nil {
		return User{}, err
	}
	var out User
	err = c.do(ctx, http.MethodGet, p, nil, nil, &out)
	return out, err
}

// CreateUser creates a local account.
func (c *Client) CreateUser(ctx context.Context, req UserRequest) (User, error) {
	var out User
	err := c.do(ctx, http.MethodPost, "/api/v1/users", nil, req, &out)
	return out, err
}

func (c *Client) userAction(ctx context.Context, ref, action string) (User, error) {
	p, err := userPath(ref, "/"+action)
	if err != nil {
		return User{}, err
	}
	var out User
	err = c.do(ctx, http.MethodPost, p, nil, nil, &out)
	return out, err
}

// DisableUser disables an account and ends its sessions.
func (c *Client) DisableUser(ctx context.Context, ref string) (User, error) {
	return c.userAction(ctx, ref, "disable")
}

// UnlockUser clears an account's failed logins and lockout.
func (c *Client) UnlockUser(ctx context.Context, ref string) (User, error) {
	return c.userAction(ctx, ref, "unlock")
}

// SetUserPassword sets an account's password; current is needed only when a
// person changes their own. Every session of the account ends.
func (c *Client) SetUserPassword(ctx context.Context, ref, password, current string) error {
	p, err := userPath(ref, "/password")
	if err != nil {
		return err
	}
	body := map[string]string{"password": password}
	if current != "" {
		body["current_password"] = current
	}
	return c.do(ctx, http.MethodPost, p, nil, body, nil)
}
