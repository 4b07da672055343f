package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/danielgtaylor/huma/v2"

	"github.com/wardhq/ward/internal/access"
)

// People's accounts. Role changes go through the two-person rule
// (approval_routes.go), not here.

type userList struct {
	Body struct {
		Items []access.User `json:"items"`
	}
}

type userOutput struct {
	Body access.User
}

type userRef struct {
	ID string `path:"id" doc:"User id or username"`
}

type createUserInput struct {
	Body struct {
		Username    string   `json:"username" minLength:"1" maxLength:"64" doc:"a-z 0-9 . _ @ -, unique"`
		DisplayName string   `json:"display_name,omitempty" maxLength:"128"`
		Email       string   `json:"email,omitempty" maxLength:"254"`
		Password    string   `json:"password" doc:"Initial password, 12 to 1024 characters; never stored nor echoed"`
		Roles       []string `json:"roles" minItems:"1" doc:"Roles; each within the creator's own"`
		Sites       []string `json:"sites,omitempty" doc:"Sites the person acts on; empty: every site (or the creator's)"`
	}
}

type setPasswordInput struct {
	requestMeta
	ID   string `path:"id" doc:"User id or username"`
	Body struct {
		Password        string `json:"password" doc:"The new password, 12 to 1024 characters"`
		CurrentPassword string `json:"current_password,omitempty" doc:"Required when changing one's own password"`
	}
}

func (s *server) userRoutes() {
	if s.cfg.Users == nil {
		return
	}
	tags := []string{"users"}
	register(s, huma.Operation{
		OperationID: "list-users", Metadata: perm(access.UsersManage), Method: http.MethodGet, Path: Prefix + "/users",
		Summary: "List people's accounts", Tags: tags,
	}, func(ctx context.Context, _ *struct{}) (*userList, error) {
		all, err := s.cfg.Users.List(ctx)
		if err != nil {
			return nil, err
		}
		out := &userList{}
		out.Body.Items = all
		return out, nil
	})
	register(s, huma.Operation{
		OperationID: "create-user", Metadata: perm(access.UsersManage), Method: http.MethodPost, Path: Prefix + "/users", DefaultStatus: http.StatusCreated,
		Summary: "Create a local account", Tags: tags,
	}, func(ctx context.Context, in *createUserInput) (*userOutput, error) {
		roles, err := access.ParseRoles(in.Body.Roles)
		if err != nil {
			return nil, err
		}
		u, err := s.cfg.Users.Create(ctx, caller(ctx), access.NewUser{Username: in.Body.Username, DisplayName: in.Body.DisplayName,
			Email: in.Body.Email, Password: in.Body.Password, Roles: roles, Sites: in.Body.Sites})
		if err != nil {
			return nil, err
		}
		return &userOutput{Body: u}, nil
	})
	register(s, huma.Operation{
		OperationID: "get-user", Metadata: perm(access.UsersManage), Method: http.MethodGet, Path: Prefix + "/users/{id}",
		Summary: "Show an account", Tags: tags,
	}, func(ctx context.Context, in *userRef) (*userOutput, error) {
		u, err := s.cfg.Users.Get(ctx, in.ID)
		if err != nil {
			return nil, err
		}
		return &userOutput{Body: u}, nil
	})
	register(s, huma.Operation{
		OperationID: "disable-user", Metadata: perm(access.UsersManage), Method: http.MethodPost, Path: Prefix + "/users/{id}/disable",
		Summary: "Disable an account and end its sessions", Tags: tags,
	}, func(ctx context.Context, in *userRef) (*userOutput, error) {
		u, err := s.cfg.Users.Disable(ctx, caller(ctx), in.ID)
		if err != nil {
			return nil, err
		}
		return &userOutput{Body: u}, nil
	})
	register(s, huma.Operation{
		OperationID: "unlock-user", Metadata: perm(access.UsersManage), Method: http.MethodPost, Path: Prefix + "/users/{id}/unlock",
		Summary: "Clear an account's failed logins and lockout", Tags: tags,
	}, func(ctx context.Context, in *userRef) (*userOutput, error) {
		u, err := s.cfg.Users.Unlock(ctx, caller(ctx), in.ID)
		if err != nil {
			return nil, err
		}
		return &userOutput{Body: u}, nil
	})
	register(s, huma.Operation{
		OperationID: "set-user-password", Metadata: perm(access.SelfService), Method: http.MethodPost, Path: Prefix + "/users/{id}/password", DefaultStatus: http.StatusNoContent,
		Summary: "Set a password: one's own (with the current one), or anyone's with users:manage; ends the account's sessions", Tags: tags,
	}, func(ctx context.Context, in *setPasswordInput) (*struct{}, error) {
		p := caller(ctx)
		target, err := s.cfg.Users.Get(ctx, in.ID)
		if err != nil {
			if errors.Is(err, access.ErrNotFound) && !p.Can(access.UsersManage) {
				// Do not tell a person which other accounts exist.
				return nil, fmt.Errorf("%w: %s may set only its own password", access.ErrForbidden, p.Actor())
			}
			return nil, err
		}
		if p.Kind == access.KindUser && p.ID == target.ID {
			if _, err := s.cfg.Users.CheckPassword(ctx, target.Username, in.Body.CurrentPassword, in.remote); err != nil {
				if errors.Is(err, access.ErrUnauthenticated) {
					return nil, fmt.Errorf("%w: the current password is wrong", access.ErrForbidden)
				}
				return nil, err
			}
		}
		if err := s.cfg.Users.SetPassword(ctx, p, target.ID, in.Body.Password); err != nil {
			return nil, err
		}
		return nil, nil
	})
}
