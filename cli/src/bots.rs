//! `postern bots`: a project's service accounts, for automation.

use clap::{Args, Subcommand};
use postern_api::admin::Role;

use crate::output::{json, safe, table};
use crate::{CliError, Ctx};

#[derive(Debug, Args)]
pub struct BotsArgs {
    #[command(subcommand)]
    action: Option<BotsCmd>,
    /// The project
    #[arg(long, short, global = true, env = "POSTERN_PROJECT")]
    project: Option<String>,
    /// JSON, as the API answers it
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum BotsCmd {
    /// Make a bot (a service account) with a role in the project; then give
    /// it a token with postern users token NAME --ttl 30d
    Create {
        name: String,
        /// project_admin, project_member or read_only
        #[arg(long, default_value = "project_member")]
        role: Role,
        /// A Unix login it may use over SSH (repeat for several)
        #[arg(long = "login")]
        logins: Vec<String>,
        /// A network its tokens work from, e.g. 10.0.0.0/8 (repeat for several; default any)
        #[arg(long = "source")]
        sources: Vec<String>,
    },
    /// Delete a bot: its tokens stop working
    Rm { name: String },
}

pub async fn bots(ctx: &Ctx, a: BotsArgs) -> Result<(), CliError> {
    let project = ctx.project(&a.project).await?;
    match a.action {
        None => {
            let bots = ctx.client.bots(&project).await?;
            if a.json {
                return json(&bots);
            }
            let rows: Vec<Vec<String>> = bots
                .iter()
                .map(|b| {
                    vec![
                        b.name.clone(),
                        b.role.to_string(),
                        b.logins.join(","),
                        b.source_cidrs
                            .as_ref()
                            .map(|c| c.join(","))
                            .unwrap_or_else(|| "any".into()),
                        b.tokens.iter().filter(|t| !t.revoked).count().to_string(),
                    ]
                })
                .collect();
            table(&["BOT", "ROLE", "LOGINS", "FROM", "TOKENS"], &rows);
            Ok(())
        }
        Some(BotsCmd::Create {
            name,
            role,
            logins,
            sources,
        }) => {
            let b = ctx
                .client
                .create_bot(
                    &project,
                    &postern_api::identity::CreateBot {
                        name,
                        role,
                        logins,
                        source_cidrs: (!sources.is_empty()).then_some(sources),
                    },
                )
                .await?;
            if a.json {
                return json(&b);
            }
            crate::outln!(
                "bot {} made ({} on {}); give it a token: postern users token {} --ttl 30d",
                safe(&b.name),
                b.role,
                safe(&b.project),
                safe(&b.name)
            );
            Ok(())
        }
        Some(BotsCmd::Rm { name }) => {
            ctx.client.delete_bot(&project, &name).await?;
            crate::outln!("bot {} deleted; its tokens no longer work", safe(&name));
            Ok(())
        }
    }
}
