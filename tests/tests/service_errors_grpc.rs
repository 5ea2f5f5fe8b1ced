//! Every kind of bad request over gRPC gets the right status and a message
//! naming the problem, and leaves every table unchanged (a lookup, the
//! training version and the tables are compared before and after each).
//! One server per test; the fixture is `featmux_tests::refusals`.

use std::time::Duration;

use featmux_client::{pb, BatchBuilder, Code};
use featmux_tests::refusals::*;
use featmux_tests::requests::{feature, sgd_table};
use featmux_tests::unchanged;

#[test]
fn unknown_tables_features_and_checkpoints_are_not_found() {
    run(async |f| {
        let Fixture {
            admin,
            data,
            good_grads,
            ..
        } = f;
        let before = snapshot(admin).await;
        expect_status(
            data.lookup("nope", &probe(), false).await,
            Code::NotFound,
            "unknown table `nope`",
        );
        expect_status(
            data.push("nope", &probe(), good_grads).await,
            Code::NotFound,
            "unknown table `nope`",
        );
        let mut unknown_feature = probe();
        unknown_feature
            .features
            .push(column("zzz", &["a", "b"], vec![1, 1]));
        expect_status(
            data.lookup("t", &unknown_feature, false).await,
            Code::NotFound,
            "zzz",
        );
        let mut grads3 = good_grads.clone();
        grads3.push(vec![0.0; 8]);
        expect_status(
            data.push("t", &unknown_feature, &grads3).await,
            Code::NotFound,
            "zzz",
        );
        expect_status(admin.get_table("nope").await, Code::NotFound, "nope");
        expect_status(
            admin.restore_checkpoint(99, "t", None).await,
            Code::NotFound,
            "checkpoint 99",
        );
        unchanged!(admin, before, "gRPC not-found");
    });
}

#[test]
fn malformed_batches_are_invalid_arguments() {
    run(async |f| {
        let Fixture {
            admin,
            data,
            good_grads,
            ..
        } = f;
        let before = snapshot(admin).await;
        let mut ragged = probe();
        ragged.features[0].lengths = vec![1, 1]; // 3 values, lengths sum to 2
        expect_status(
            data.lookup("t", &ragged, false).await,
            Code::InvalidArgument,
            "u",
        );
        expect_status(
            data.push("t", &ragged, good_grads).await,
            Code::InvalidArgument,
            "u",
        );
        // `n` has one value per example: the builder sends that count, not
        // lengths.
        assert_eq!(probe().features[1].values_per_example, 1);
        assert!(probe().features[1].lengths.is_empty());
        let mut mismatched = probe();
        mismatched.features[1].values_per_example = 0;
        mismatched.features[1].lengths = vec![1, 1, 0]; // 3 examples vs 2
        expect_status(
            data.lookup("t", &mismatched, false).await,
            Code::InvalidArgument,
            "n",
        );
        let mut both = probe();
        both.features[1].lengths = vec![1, 1];
        expect_status(
            data.lookup("t", &both, false).await,
            Code::InvalidArgument,
            "feature `n`: set `lengths` or `values_per_example`, not both",
        );
        let mut partial = probe();
        partial.features[1].values_per_example = 3;
        expect_status(
            data.push("t", &partial, good_grads).await,
            Code::InvalidArgument,
            "2 values are not a whole number of examples of 3",
        );
        for (bad, needle) in [
            (
                packed(b"abc", &[1, 1]),
                "lengths add up to 2 bytes but `data` has 3",
            ),
            (packed(b"abc", &[1, 1, 5]), "more than the 3 bytes"),
            (packed(b"a\xffc", &[1, 1, 1]), "not UTF-8"),
            (
                packed("aéc".as_bytes(), &[2, 1, 1]),
                "value 0 ends inside a UTF-8 character",
            ),
        ] {
            expect_status(
                data.lookup("t", &bad, false).await,
                Code::InvalidArgument,
                needle,
            );
            expect_status(
                data.push("t", &bad, good_grads).await,
                Code::InvalidArgument,
                needle,
            );
        }
        let mut ragged_lengths = packed(b"abc", &[1, 1, 1]);
        if let Some(pb::feature_values::Values::PackedStrings(p)) =
            &mut ragged_lengths.features[0].values
        {
            p.lengths.truncate(11);
        }
        expect_status(
            data.lookup("t", &ragged_lengths, false).await,
            Code::InvalidArgument,
            "`lengths` has 11 bytes",
        );
        let mut ragged_int64s = probe();
        ragged_int64s.features[1].values =
            Some(pb::feature_values::Values::PackedInt64s(pb::PackedInt64s {
                data: vec![0; 12].into(),
            }));
        for needle in ["feature `n`", "`packed_int64s` has 12 bytes"] {
            expect_status(
                data.lookup("t", &ragged_int64s, false).await,
                Code::InvalidArgument,
                needle,
            );
            expect_status(
                data.push("t", &ragged_int64s, good_grads).await,
                Code::InvalidArgument,
                needle,
            );
        }
        let mut wrong_type = probe();
        wrong_type.features[1] = column("n", &["7", "-1"], vec![1, 1]);
        expect_status(
            data.lookup("t", &wrong_type, false).await,
            Code::InvalidArgument,
            "n",
        );
        let mut no_values = probe();
        no_values.features[0].values = None;
        expect_status(
            data.lookup("t", &no_values, false).await,
            Code::InvalidArgument,
            "`strings` or `int64s`",
        );
        let mut bad_weights = probe();
        bad_weights.features[0].weights = vec![1.0];
        expect_status(
            data.lookup("t", &bad_weights, false).await,
            Code::InvalidArgument,
            "weight",
        );
        unchanged!(admin, before, "gRPC malformed batch");
    });
}

#[test]
fn wrong_or_non_finite_gradients_are_invalid_arguments() {
    run(async |f| {
        let Fixture {
            admin,
            data,
            good_grads,
            ..
        } = f;
        let before = snapshot(admin).await;
        let short = vec![vec![0.5f32; 7], vec![0.5f32; 16]];
        expect_status(
            data.push("t", &probe(), &short).await,
            Code::InvalidArgument,
            "u",
        );
        let mut nan = good_grads.clone();
        nan[1][3] = f32::NAN;
        expect_status(
            data.push("t", &probe(), &nan).await,
            Code::InvalidArgument,
            "n",
        );
        let mut inf = good_grads.clone();
        inf[0][0] = f32::INFINITY;
        expect_status(
            data.push("t", &probe(), &inf).await,
            Code::InvalidArgument,
            "u",
        );
        expect_status(
            data.push("t", &probe(), &good_grads[..1]).await,
            Code::InvalidArgument,
            "1 gradient blocks",
        );
        unchanged!(admin, before, "gRPC bad gradients");
        // Finite gradients whose step overflows f32 (lr 1e30 × 1e10) would
        // write inf into shared rows: refused, naming feature and row.
        admin
            .create_table(
                sgd_table("hot", 100, 4, 1e30),
                vec![feature("u", pb::ValueType::String, pb::Pooling::Sum, 1)],
            )
            .await
            .unwrap();
        let before = snapshot(admin).await;
        let mut users = BatchBuilder::new();
        users.example().add_str("u", "alice");
        users.example().add_strs("u", ["bob", "carol"]);
        let users = users.build().unwrap();
        let hot_rows = admin.lookup("hot", &users, false).await.unwrap();
        expect_status(
            data.push("hot", &users, &[vec![1e10f32; 2 * 4]]).await,
            Code::InvalidArgument,
            "feature `u`: the update would make row",
        );
        assert_eq!(
            admin.lookup("hot", &users, false).await.unwrap(),
            hot_rows,
            "a refused overflowing push changed rows"
        );
        unchanged!(admin, before, "gRPC bad gradients");
    });
}

#[test]
fn bad_admin_calls_are_refused_all_or_nothing() {
    run(async |f| {
        let Fixture { admin, .. } = f;
        let before = snapshot(admin).await;
        expect_status(
            admin
                .create_table(sgd_table("zero", 0, 4, 0.1), vec![])
                .await,
            Code::InvalidArgument,
            "rows",
        );
        expect_status(
            admin.create_table(sgd_table("t", 10, 4, 0.1), vec![]).await,
            Code::AlreadyExists,
            "`t`",
        );
        expect_status(
            admin
                .create_table(
                    sgd_table("half", 10, 4, 0.1),
                    vec![
                        feature("a", pb::ValueType::String, pb::Pooling::Sum, 1),
                        feature("a", pb::ValueType::String, pb::Pooling::Sum, 1),
                    ],
                )
                .await,
            Code::AlreadyExists,
            "a",
        );
        expect_status(
            admin
                .add_features(
                    "t",
                    vec![
                        feature("new", pb::ValueType::String, pb::Pooling::Sum, 1),
                        feature("u", pb::ValueType::String, pb::Pooling::Sum, 1),
                    ],
                )
                .await,
            Code::AlreadyExists,
            "u",
        );
        let mut bad_pooling = feature("p", pb::ValueType::String, pb::Pooling::Sum, 1);
        bad_pooling.pooling = 17;
        expect_status(
            admin.add_features("t", vec![bad_pooling]).await,
            Code::InvalidArgument,
            "pooling 17",
        );
        unchanged!(admin, before, "gRPC admin errors");
    });
}

#[test]
fn missing_or_wrong_tokens_are_unauthenticated() {
    run(async |f| {
        let Fixture {
            admin,
            data,
            anonymous,
            wrong,
            good_grads,
            ..
        } = f;
        let before = snapshot(admin).await;
        expect_status(
            anonymous.lookup("t", &probe(), false).await,
            Code::Unauthenticated,
            "missing",
        );
        expect_status(
            anonymous.push("t", &probe(), good_grads).await,
            Code::Unauthenticated,
            "missing",
        );
        expect_status(
            wrong.lookup("t", &probe(), false).await,
            Code::Unauthenticated,
            "wrong token",
        );
        expect_status(
            data.list_tables().await,
            Code::Unauthenticated,
            "admin token",
        );
        expect_status(
            data.drop_table("t").await,
            Code::Unauthenticated,
            "admin token",
        );
        expect_status(
            anonymous.create_checkpoint().await,
            Code::Unauthenticated,
            "admin token",
        );
        assert!(anonymous
            .train()
            .await
            .is_err_and(|e| e.code() == Some(Code::Unauthenticated)));
        unchanged!(admin, before, "gRPC unauthenticated");
    });
}

#[test]
fn requests_over_the_limits_are_resource_exhausted() {
    run(async |f| {
        let Fixture { admin, data, .. } = f;
        let before = snapshot(admin).await;
        let big: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
        let too_many = pb::Batch {
            features: vec![BatchBuilder::strings_column("u", big.clone(), vec![1001])],
        };
        expect_status(
            data.lookup("t", &too_many, false).await,
            Code::ResourceExhausted,
            "max_batch_values",
        );
        expect_status(
            data.push("t", &too_many, &[vec![0.0; 4]]).await,
            Code::ResourceExhausted,
            "max_batch_values",
        );
        let huge = pb::Batch {
            features: vec![BatchBuilder::strings_column(
                "u",
                vec!["x".repeat(70_000)],
                vec![1],
            )],
        };
        expect_status(
            data.lookup("t", &huge, false).await,
            Code::ResourceExhausted,
            "max_message_bytes",
        );
        expect_status(
            data.push("t", &probe(), &[vec![0.0; 2 * 4], vec![0.0; 20_000]])
                .await,
            Code::ResourceExhausted,
            "max_message_bytes",
        );
        // The Train stream refuses a message over the limit from its header
        // (served below tonic's codec: grpc/raw_train.rs), and the stream ends.
        let status = raw::train(f.server.grpc_url(), Some(DATA), vec![0; 70_000]).await;
        assert_eq!(status.code(), Code::ResourceExhausted, "Train: {status:?}");
        assert!(
            status.message().contains("max_message_bytes"),
            "Train: {status:?}"
        );
        // 300 values of a 4-chunk feature are 1,200 (value, chunk) entries:
        // over the limit of 1,000 although the values are not.
        let wide_bag = pb::Batch {
            features: vec![column("w", &["a"; 300], vec![300])],
        };
        expect_status(
            data.lookup("wide", &wide_bag, false).await,
            Code::ResourceExhausted,
            "1200 (value, chunk) entries",
        );
        expect_status(
            data.push("wide", &wide_bag, &[vec![0.0; 256]]).await,
            Code::ResourceExhausted,
            "1200 (value, chunk) entries",
        );
        // 100 examples × 1 KiB of embeddings > the 64 KiB message limit.
        let wide = pb::Batch {
            features: vec![column("w", &["a"; 100], vec![1; 100])],
        };
        expect_status(
            data.lookup("wide", &wide, false).await,
            Code::ResourceExhausted,
            "split the batch",
        );
        unchanged!(admin, before, "gRPC too large");
    });
}

#[test]
fn bytes_that_are_not_protobuf_are_invalid_arguments() {
    run(async |f| {
        let Fixture { admin, .. } = f;
        let before = snapshot(admin).await;
        // EmbeddingService's unary methods are served below tonic's codec
        // (grpc/raw_unary.rs): all refuse as tonic's codec did.
        for path in [
            "/featmux.v1.EmbeddingService/Push",
            "/featmux.v1.EmbeddingService/Lookup",
            "/featmux.v1.EmbeddingService/PushRows",
            "/featmux.v1.EmbeddingService/LookupRows",
        ] {
            let status = raw::call(
                f.server.grpc_url(),
                path,
                Some(DATA),
                vec![0xff, 0xff, 0xff],
            )
            .await;
            assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
            assert!(
                status.message().contains("malformed request message"),
                "{path}: {status:?}"
            );
        }
        // A method the service lacks, as tonic's generated service answered.
        let path = "/featmux.v1.EmbeddingService/Nope";
        let status = raw::call(f.server.grpc_url(), path, Some(DATA), Vec::new()).await;
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
        assert!(status.message().contains("no method at"), "{status:?}");
        unchanged!(admin, before, "gRPC malformed protobuf");
    });
}

/// Tokens are checked before a message is decoded (a message of garbage
/// from a client without the right token is refused for its token, so an
/// anonymous client cannot make the server decode hundreds of MiB).
#[test]
fn tokens_are_checked_before_the_message_is_decoded() {
    run(async |f| {
        let Fixture { admin, .. } = f;
        let before = snapshot(admin).await;
        let garbage = vec![0xff, 0xff, 0xff];
        for (path, token) in [
            ("/featmux.v1.EmbeddingService/Lookup", None),
            ("/featmux.v1.EmbeddingService/Push", Some("nope")),
            ("/featmux.v1.AdminService/CreateTable", None),
            ("/featmux.v1.AdminService/CreateTable", Some(DATA)),
        ] {
            let status = raw::call(f.server.grpc_url(), path, token, garbage.clone()).await;
            assert_eq!(status.code(), Code::Unauthenticated, "{path}: {status:?}");
        }
        let status = raw::train(f.server.grpc_url(), None, garbage.clone()).await;
        assert_eq!(status.code(), Code::Unauthenticated, "Train: {status:?}");
        // With the right token the same bytes reach the decoder.
        let status = raw::train(f.server.grpc_url(), Some(DATA), garbage).await;
        assert_eq!(status.code(), Code::InvalidArgument, "Train: {status:?}");
        unchanged!(admin, before, "gRPC unauthenticated garbage");
    });
}

#[test]
fn unknown_foreign_expired_and_refused_tickets() {
    run(async |f| {
        let Fixture {
            admin,
            data,
            good_grads,
            ..
        } = f;
        let before = snapshot(admin).await;
        let short = vec![vec![0.5f32; 7], vec![0.5f32; 16]];
        let mut nan = good_grads.clone();
        nan[1][3] = f32::NAN;
        expect_status(
            data.push_ticket("t", 12345, good_grads).await,
            Code::NotFound,
            "ticket 12345",
        );
        let ticket = data
            .lookup("t", &probe(), true)
            .await
            .unwrap()
            .ticket
            .unwrap();
        expect_status(
            data.push_ticket("other", ticket, good_grads).await,
            Code::InvalidArgument,
            "belongs to table `t`",
        );
        expect_status(
            data.push_ticket("t", ticket, &short).await,
            Code::InvalidArgument,
            "u",
        );
        tokio::time::sleep(Duration::from_millis(1300)).await;
        expect_status(
            data.push_ticket("t", ticket, good_grads).await,
            Code::NotFound,
            "expired",
        );
        unchanged!(admin, before, "gRPC tickets");
        // A refused ticket push leaves the ticket usable.
        let kept = data
            .lookup("t", &probe(), true)
            .await
            .unwrap()
            .ticket
            .unwrap();
        expect_status(
            data.push_ticket("t", kept, &nan).await,
            Code::InvalidArgument,
            "n",
        );
        unchanged!(admin, before, "refused ticket push");
        let pushed = data.push_ticket("t", kept, good_grads).await.unwrap();
        assert_eq!(pushed.version, before.version + 1);
    });
}

/// Sends raw bytes as a gRPC request body (what a broken client would).
mod raw {
    use bytes::{Buf, BufMut};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::Status;

    #[derive(Default)]
    pub struct RawCodec;
    pub struct Raw;

    impl Encoder for Raw {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for Raw {
        type Item = Vec<u8>;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
            let bytes = src.chunk().to_vec();
            src.advance(bytes.len());
            Ok(Some(bytes))
        }
    }

    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }

    /// Calls `path` with `body`; the status the server answered.
    async fn grpc(url: String) -> tonic::client::Grpc<tonic::transport::Channel> {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        grpc
    }

    fn with_token<T>(body: T, token: Option<&str>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(body);
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    }

    /// Calls `path` with `body` and `token`; the status the server answered.
    pub async fn call(
        url: String,
        path: &'static str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> Status {
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
        grpc(url)
            .await
            .unary(with_token(body, token), path, RawCodec)
            .await
            .expect_err("refused")
    }

    /// Opens the `Train` stream with one raw message; the status the server
    /// answered (at the call or as the stream's first item).
    pub async fn train(url: String, token: Option<&str>, body: Vec<u8>) -> Status {
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/featmux.v1.EmbeddingService/Train",
        );
        let messages = tokio_stream::iter([body]);
        match grpc(url)
            .await
            .streaming(with_token(messages, token), path, RawCodec)
            .await
        {
            Err(status) => status,
            Ok(response) => {
                let mut stream = response.into_inner();
                stream.message().await.expect_err("refused")
            }
        }
    }
}
