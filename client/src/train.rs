//! The Train stream: lookups and pushes on one HTTP/2 stream, answered in
//! order, for trainers that issue many small requests.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::client::Transport;
use crate::{decode_lookup, encode_gradients, pb, ClientError, Lookup};
use pb::embedding_service_client::EmbeddingServiceClient;

/// An open Train stream. Requests may be pipelined: send several, then
/// read their answers in the same order.
pub struct TrainStream {
    requests: mpsc::Sender<pb::TrainRequest>,
    responses: Streaming<pb::TrainResponse>,
    next_id: u64,
}

/// One answer on the stream; a failed request does not end the stream.
#[derive(Debug)]
pub enum TrainReply {
    Lookup(Lookup),
    Push(pb::PushResponse),
}

impl TrainStream {
    pub(crate) async fn open(
        mut rpc: EmbeddingServiceClient<Transport>,
    ) -> Result<Self, ClientError> {
        let (requests, rx) = mpsc::channel(16);
        let responses = rpc.train(ReceiverStream::new(rx)).await?.into_inner();
        Ok(TrainStream {
            requests,
            responses,
            next_id: 1,
        })
    }

    async fn send(&mut self, op: pb::train_request::Op) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        self.requests
            .send(pb::TrainRequest { id, op: Some(op) })
            .await
            .map_err(|_| ClientError::Response("the train stream is closed".into()))?;
        Ok(id)
    }

    /// Sends a lookup; returns its request id.
    pub async fn send_lookup(
        &mut self,
        table: &str,
        batch: pb::Batch,
        want_ticket: bool,
    ) -> Result<u64, ClientError> {
        self.send(pb::train_request::Op::Lookup(pb::LookupRequest {
            table: table.to_owned(),
            batch: Some(batch),
            want_ticket,
        }))
        .await
    }

    /// Sends a push for a ticket; returns its request id.
    pub async fn send_push_ticket(
        &mut self,
        table: &str,
        ticket: u64,
        grads: &[Vec<f32>],
    ) -> Result<u64, ClientError> {
        self.send(pb::train_request::Op::Push(pb::PushRequest {
            table: table.to_owned(),
            target: Some(pb::push_request::Target::Ticket(ticket)),
            gradients: encode_gradients(grads),
            // A stream is not retried: its messages need no request id.
            request_id: 0,
        }))
        .await
    }

    /// The next answer: its request id and result.
    pub async fn recv(&mut self) -> Result<(u64, Result<TrainReply, ClientError>), ClientError> {
        let response = self
            .responses
            .message()
            .await?
            .ok_or_else(|| ClientError::Response("the server ended the train stream".into()))?;
        let reply = match response.result {
            Some(pb::train_response::Result::Lookup(l)) => decode_lookup(l).map(TrainReply::Lookup),
            Some(pb::train_response::Result::Push(p)) => Ok(TrainReply::Push(p)),
            Some(pb::train_response::Result::Error(e)) => Err(ClientError::Status(
                tonic::Status::new(tonic::Code::from_i32(e.code), e.message),
            )),
            None => Err(ClientError::Response("empty train response".into())),
        };
        Ok((response.id, reply))
    }

    /// Looks up and waits for the answer.
    pub async fn lookup(
        &mut self,
        table: &str,
        batch: pb::Batch,
        want_ticket: bool,
    ) -> Result<Lookup, ClientError> {
        self.send_lookup(table, batch, want_ticket).await?;
        match self.recv().await?.1? {
            TrainReply::Lookup(l) => Ok(l),
            TrainReply::Push(_) => Err(ClientError::Response("push answer to a lookup".into())),
        }
    }

    /// Pushes a ticket's gradients and waits for the answer.
    pub async fn push_ticket(
        &mut self,
        table: &str,
        ticket: u64,
        grads: &[Vec<f32>],
    ) -> Result<pb::PushResponse, ClientError> {
        self.send_push_ticket(table, ticket, grads).await?;
        match self.recv().await?.1? {
            TrainReply::Push(p) => Ok(p),
            TrainReply::Lookup(_) => Err(ClientError::Response("lookup answer to a push".into())),
        }
    }
}
