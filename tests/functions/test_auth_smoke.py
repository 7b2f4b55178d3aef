from tests.conftest import table_counts


def test_register_login_me_round_trip(db, client):
    c = client("auth")
    r = c.post("/register", json={"email": "Ann@Example.com", "password": "s3cret-pass"})
    assert r.status_code == 201, r.get_data(as_text=True)
    assert r.json["email"] == "ann@example.com"
    r = c.post("/login", json={"email": "ann@example.com", "password": "s3cret-pass"})
    assert r.status_code == 200, r.json
    access = r.json["access_token"]
    r = c.get("/me", headers={"Authorization": f"Bearer {access}"})
    assert r.status_code == 200 and r.json["email"] == "ann@example.com"
    before = table_counts(db)
    r = c.post("/register", data="{bad", content_type="application/json")
    assert r.status_code == 400 and r.mimetype == "application/problem+json"
    assert table_counts(db) == before
