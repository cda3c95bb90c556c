module github.com/cached-dev/cached/clients/go

go 1.19
